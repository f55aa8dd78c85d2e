"""`factorized`: learned row and column tables (the ViT paper's "2-D" embedding).

Parameters `row_embedding` [h, D_r] and `col_embedding` [w, D_c], initialised N(0, 0.02²).
With `posemb_factorized="concat"` patch (i, j) gets [row_i, col_j] (D_r = D_c = D/2); with
"sum" it gets row_i + col_j (two [·, D] tables). The class token gets none.

At another grid each table is resampled along its one axis (`resize_factorized`), whatever
`posemb_mode` says (learned tables have no values outside their grid, so "extrapolate"
resamples too); on restore once, with `dynamic_image_size` on the fly from the stored tables.
The two tables together tell a stored model's grid, square or not.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models.posemb.base import (
    Layout,
    ParamRule,
    Position,
    Variant,
    adapt_to_tokens,
    no_prefix,
)
from vit_jax.models.posemb.learned import add_to_patches
from vit_jax.models.resize import resize_grid
from vit_jax.options import unknown_choice

MODES = ("concat", "sum")
ROW, COL = "row_embedding", "col_embedding"


def factorized_table(row: jax.Array, col: jax.Array, mode: str) -> jax.Array:
    """Row table [h, D_r] and column table [w, D_c] -> per-patch embedding [h * w, D]."""
    h, w = row.shape[0], col.shape[0]
    if mode == "concat":
        rows = jnp.broadcast_to(row[:, None, :], (h, w, row.shape[1]))
        cols = jnp.broadcast_to(col[None, :, :], (h, w, col.shape[1]))
        table = jnp.concatenate([rows, cols], axis=-1)
    else:
        table = row[:, None, :] + col[None, :, :]
    return table.reshape(h * w, -1)


def resize_factorized(
    table: jax.Array | np.ndarray, new_length: int, *, method: str = "cubic", antialias: bool = True
) -> jax.Array:
    """1D resize of a factorized table (`row_embedding` [h, D_r] or `col_embedding` [w, D_c])
    to [new_length, D_*]."""
    return resize_grid(table, (new_length,), method, antialias)


def add(module: nn.Module, position: Position, x: jax.Array) -> jax.Array:
    """x [B, num_prefix_tokens + h*w, D] plus the row/column embedding of each patch (tables
    stored for the parameter grid, resized to the tokens' grid if that differs)."""
    dim, (h, w) = x.shape[-1], position.param_grid
    table_dim = dim // 2 if position.posemb_factorized == "concat" else dim
    init = nn.initializers.normal(stddev=0.02)
    row = module.param(ROW, init, (h, table_dim), module.param_dtype)
    col = module.param(COL, init, (w, table_dim), module.param_dtype)
    row, col = (
        adapt_to_tokens(rule, table, position, 0)
        for rule, table in zip(RULES, (row, col), strict=True)
    )
    pe = factorized_table(row, col, position.posemb_factorized)
    return add_to_patches(x, pe, position.num_prefix_tokens)


def check(model) -> None:
    if model.posemb_factorized not in MODES:
        raise unknown_choice("posemb_factorized", model.posemb_factorized, MODES)
    if model.posemb_factorized == "concat" and model.hidden_size % 2:
        raise ValueError(
            "posemb='factorized' with posemb_factorized='concat' gives half the channels to "
            f"rows and half to columns, so hidden_size must be even; got {model.hidden_size}. "
            "Use posemb_factorized='sum' or an even width."
        )


def _rule(name: str, axis_of_grid: int) -> ParamRule:
    """The rule of the table along grid axis `axis_of_grid` (0: rows, 1: columns)."""

    def resize(value, old: Layout, new: Layout, *, mode: str = "auto", **options) -> jax.Array:
        # Every mode resamples: a table has nothing to extrapolate with.
        return resize_factorized(value, new.grid[axis_of_grid], **options)

    def candidates(length: int, prefix: int) -> set:
        return {(length, None)} if axis_of_grid == 0 else {(None, length)}

    return ParamRule(
        name=name,
        variant="factorized",
        axis=0,
        length=lambda layout: layout.grid[axis_of_grid],
        candidates=candidates,
        prefix_hint=no_prefix,
        resize=resize,
    )


RULES = (_rule(ROW, 0), _rule(COL, 1))

VARIANT = Variant(
    name="factorized",
    doc="learned row and column tables, concatenated or summed (ViT paper's 2-D)",
    add=add,
    check=check,
    params=RULES,
)
