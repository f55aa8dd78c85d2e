"""Hostile inputs: random field values for the model, random arguments for resize_posemb and
random or damaged files for the checkpoint loaders either work or raise ValueError (or the
package's checkpoint errors, which are ValueErrors) with a message; never another exception."""

import os

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SMALL, random_params
from vit_jax import models
from vit_jax.checkpoint import checkpoint_shapes, export_npz, load_params, resize_posemb

ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.tuples(st.integers(-2, 40), st.integers(-2, 40)),
    st.lists(st.integers(-2, 40), max_size=3),
)
FIELDS = [f for f in models.FIELDS if f not in ("num_classes", "image_size")]


# derandomize: the same examples on every run (CI stays deterministic); raise max_examples or
# drop derandomize locally to search further.
def fuzz(examples: int):
    """The same `examples` on every run, no deadline, no example database."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )


FAST = fuzz(150)


@FAST
@given(
    st.dictionaries(st.sampled_from(FIELDS), ANYTHING, max_size=3),
    st.one_of(st.integers(-2, 40), st.tuples(st.integers(-2, 40), st.integers(-2, 40))),
    ANYTHING,
)
def test_model_fields_either_build_a_model_that_initialises_or_raise_value_error(
    fields, size, num_classes
):
    try:
        model = models.create(
            "Ti/4", num_classes=num_classes, image_size=size, **{**SMALL, **fields}
        )
    except ValueError as e:
        assert str(e)
        return
    images = jax.ShapeDtypeStruct((1, *model.image_size, 3), np.float32)
    jax.eval_shape(model.init, jax.random.key(0), images)  # builds: it must initialise too


@FAST
@given(
    rows=st.integers(0, 40),
    prefix=st.integers(-2, 3),
    new_grid=st.one_of(st.tuples(st.integers(-2, 9), st.integers(-2, 9)), st.just((3,))),
    old_grid=st.one_of(st.none(), st.tuples(st.integers(-2, 9), st.integers(-2, 9))),
    new_prefix=st.one_of(st.none(), st.integers(-2, 3)),
    method=st.sampled_from(["cubic", "linear", "cubic-pytorch", "bogus"]),
)
def test_resize_posemb_resizes_or_raises_value_error(
    rows, prefix, new_grid, old_grid, new_prefix, method
):
    posemb = np.ones((1, rows, 4), np.float32)
    try:
        out = resize_posemb(
            posemb,
            new_grid,
            num_prefix_tokens=prefix,
            old_grid=old_grid,
            new_num_prefix_tokens=new_prefix,
            method=method,
        )
    except ValueError as e:
        assert str(e)
        return
    kept = prefix if new_prefix is None else new_prefix
    assert out.shape == (1, kept + new_grid[0] * new_grid[1], 4)
    assert len(new_grid) == 2 and min(new_grid) >= 1 and prefix >= 0 and kept >= 0


@pytest.fixture(scope="module")
def npz_bytes(tmp_path_factory) -> bytes:
    model = models.create("Ti/4", num_classes=3, image_size=8, **SMALL)
    path = tmp_path_factory.mktemp("npz") / "ok.npz"
    export_npz(path, random_params(model))
    return path.read_bytes()


@fuzz(60)
@given(data=st.data())
def test_damaged_or_foreign_npz_files_raise_value_error(npz_bytes, tmp_path_factory, data):
    how = data.draw(st.sampled_from(["truncate", "flip", "random", "empty"]))
    blob = bytearray(npz_bytes)
    if how == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif how == "flip":
        for i in data.draw(st.lists(st.integers(0, len(blob) - 1), min_size=1, max_size=20)):
            blob[i] ^= 0xFF
    elif how == "random":
        blob = bytearray(data.draw(st.binary(max_size=2000)))
    else:
        blob = bytearray()
    path = os.path.join(tmp_path_factory.mktemp("bad"), "bad.npz")
    with open(path, "wb") as f:
        f.write(blob)
    for read in (checkpoint_shapes, load_params):
        try:
            read(path)
        except ValueError as e:
            assert str(e)


def _config_fields() -> list[tuple[str, str]]:
    """(section, field) of every declared config field but the model's (fuzzed above)."""
    from vit_jax.options import options_of
    from vit_jax.train import config as config_lib

    sections = {
        None: config_lib.TrainOptions,
        "optimizer": config_lib.OptimizerOptions,
        "init_options": config_lib.RestoreOptions,
        "mesh": config_lib.MeshOptions,
        "sharding": config_lib.ShardingOptions,
        "data": config_lib.DataOptions,
    }
    return [(s, o.name) for s, cls in sections.items() for o in options_of(cls)]


@FAST
@given(st.lists(st.tuples(st.sampled_from(_config_fields()), ANYTHING), max_size=3))
def test_config_values_either_validate_or_raise_value_error(changes):
    from vit_jax.train.config import base_config, validate

    config = base_config()
    config.model.num_classes = 10
    for (section, field), value in changes:
        target = config if section is None else config[section]
        with target.ignore_type():
            target[field] = value
    try:
        settings = validate(config)
    except ValueError as e:
        assert str(e)
        return
    assert settings.train.batch_size >= 1 and settings.train.keep_checkpoints >= 1


@pytest.fixture(scope="module")
def orbax_step(tmp_path_factory) -> str:
    from vit_jax.checkpoint import save_orbax_params

    model = models.create("Ti/4", num_classes=3, image_size=8, **SMALL)
    root = tmp_path_factory.mktemp("orbax")
    return save_orbax_params(root / "ckpt", random_params(model), config={"model": {}})


@fuzz(25)
@given(data=st.data())
def test_damaged_orbax_checkpoints_raise_value_error(orbax_step, tmp_path_factory, data):
    import shutil

    step = shutil.copytree(orbax_step, tmp_path_factory.mktemp("damaged") / "0")
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(step) for name in names)
    for path in data.draw(st.lists(st.sampled_from(files), min_size=1, max_size=4, unique=True)):
        how = data.draw(st.sampled_from(["delete", "truncate", "zero", "random"]))
        if how == "delete":
            os.remove(path)
            continue
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            if how == "truncate":
                f.truncate(data.draw(st.integers(0, max(size - 1, 0))))
            else:
                blob = (
                    b"\0" * size
                    if how == "zero"
                    else data.draw(st.binary(min_size=size, max_size=size))
                )
                f.write(blob)
    for read in (checkpoint_shapes, load_params):
        try:
            read(str(step))
        except ValueError as e:  # UnreadableCheckpointError, or a reader's ValueError
            assert str(e)
