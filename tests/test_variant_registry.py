"""Adding a position-embedding variant is its own file plus one line in the registry: a variant
defined in this file and registered joins the model, its checks, shape inference and restore."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import SMALL
from vit_jax import models
from vit_jax.checkpoint import adapt_params, architecture
from vit_jax.models import posemb
from vit_jax.models.posemb import Layout, ParamRule, Position, Variant
from vit_jax.models.posemb.base import no_prefix
from vit_jax.models.posemb.learned import add_to_patches
from vit_jax.models.resize import resize_grid

PARAM = "row_embedding_only"
KEY = f"Transformer/posembed_input/{PARAM}"


def add(module: nn.Module, position: Position, x: jax.Array) -> jax.Array:
    """A learned embedding per grid row, shared by the row's patches."""
    h, w = position.grid
    init = nn.initializers.normal(stddev=0.02)
    table = module.param(PARAM, init, (h, x.shape[-1]), module.param_dtype)
    return add_to_patches(x, jnp.repeat(table, w, axis=0), position.num_prefix_tokens)


def resize(value, old: Layout, new: Layout, *, method: str, antialias: bool, mode: str):
    # A learned table only resamples, whatever posemb_mode says.
    return resize_grid(value, (new.grid[0],), method, antialias)


def check(model) -> None:
    if model.hidden_size < 8:
        raise ValueError("posemb='rows' needs hidden_size >= 8.")


ROWS = Variant(
    name="rows",
    doc="a learned embedding per grid row",
    add=add,
    check=check,
    params=(
        ParamRule(
            name=PARAM,
            variant="rows",
            axis=0,
            length=lambda layout: layout.grid[0],
            candidates=lambda length, prefix: {(length, None)},
            prefix_hint=no_prefix,
            resize=resize,
        ),
    ),
)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(posemb.VARIANTS, ROWS.name, ROWS)  # the one registry line


def test_a_registered_variant_builds_trains_is_recognised_and_restores(registered):
    model = models.create(
        "Ti/4", num_classes=3, image_size=(8, 12), posemb="rows+rope_axial", **SMALL
    )
    x = jax.random.normal(jax.random.key(1), (2, 8, 12, 3))
    params = model.init(jax.random.key(0), x)["params"]
    assert params["Transformer"]["posembed_input"][PARAM].shape == (2, 32)
    grads = jax.grad(lambda p: model.apply({"params": p}, x)[:, 0].sum())(
        jax.tree.map(lambda a: a + 0.1, params)
    )
    assert np.abs(grads["Transformer"]["posembed_input"][PARAM]).sum() > 0

    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    assert architecture.infer(shapes, {}).posemb == "rows"  # rope_axial stores nothing

    bigger = model.clone(image_size=(16, 24))
    restored, report = adapt_params(params, bigger, jax.random.key(2), old_grid=(2, 3))
    assert report.keys("resized") == [KEY]
    np.testing.assert_allclose(
        restored["Transformer"]["posembed_input"][PARAM],
        resize_grid(params["Transformer"]["posembed_input"][PARAM], (4,)),
    )


def test_a_registered_variant_is_checked_and_unregistered_names_are_refused(registered):
    with pytest.raises(ValueError, match="posemb='rows' needs hidden_size >= 8"):
        models.create(
            "Ti/4", num_classes=3, image_size=8, posemb="rows", hidden_size=4, num_heads=1
        )
    with pytest.raises(ValueError, match="'rowz' is unknown \\(did you mean 'rows'\\?\\)"):
        models.create("Ti/4", num_classes=3, image_size=8, posemb="rowz", **SMALL)
