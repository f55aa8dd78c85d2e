"""Shared test set-up: 8 simulated CPU devices (set before JAX initialises), the small model
sizes and random parameters every model test uses, the digits dataset built once per session,
readers of a run's metrics, and a persistent compilation cache for the session.

Helpers are imported by the test modules (`from tests.conftest import SMALL, random_params`);
fixtures (`digits_dir`) are found by pytest.
"""

import json
import os
import tempfile

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The persistent compilation cache, on by default in runs, kept inside this session's temp dir
# (every run and subprocess of the session shares it; the user's cache is left alone).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="vit_jax_xla_"))
# Every program, as runs keep them (`use_compilation_cache`): the subprocess runs of the tests
# then skip the ~100 small compilations a run makes.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402  (after the environment above)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# The encoder of every small test model: width 32, 2 blocks of 4 heads.
SMALL = dict(hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64)


def random_params(model, seed: int = 0, channels: int = 3) -> dict:
    """Random numpy parameters of the model's shapes, every leaf N(0, 0.3²) (zero-initialised
    heads would hide mistakes and position effects); shapes from eval_shape, nothing compiled."""
    x = jax.ShapeDtypeStruct((1, *model.image_size, channels), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def tiny_config(data_dir, **overrides):
    """A seconds-long digits run of a SMALL model on 8x8 images: 6 steps of batch 32, a
    checkpoint every 3. `overrides` set fields, dotted for sections ("model.dropout_rate")."""
    from vit_jax.train.config import base_config, model_config

    config = base_config()
    config.model = model_config("Ti/4", 8, num_classes=10, **SMALL)
    config.data.data_dir = str(data_dir)
    config.data.crop_area_min = 0.5
    config.data.flip = False
    config.data.cache = True
    config.batch_size = 32
    config.eval_batch_size = 64
    config.total_steps = 6
    config.optimizer.warmup_steps = 2
    config.log_every_steps = 1
    config.checkpoint_every_steps = 3
    config.plots = False  # drawn only where plots are tested (tests/test_viz.py)
    for key, value in overrides.items():
        section, _, field = key.rpartition(".")
        (config[section] if section else config)[field] = value
    return config


def read_metrics(workdir) -> list[dict]:
    """Every record of WORKDIR/metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def losses_by_step(workdir) -> dict[int, float]:
    """Train loss of each step in metrics.jsonl (each step must be logged once)."""
    steps = [(r["step"], r["loss"]) for r in read_metrics(workdir) if "split" not in r]
    assert len({s for s, _ in steps}) == len(steps), "a step was logged twice"
    return dict(steps)


def eval_records(workdir) -> list[dict]:
    """The evaluation records of metrics.jsonl."""
    return [r for r in read_metrics(workdir) if "split" in r]


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> str:
    """A tfds data dir with the embedded digits built, once per test session (and worker)."""
    from vit_jax.data import prepare_digits

    path = str(tmp_path_factory.mktemp("tfds"))
    prepare_digits(path)
    return path
