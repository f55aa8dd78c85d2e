"""`learned`: a learned table added to the tokens (the official ViT).

Parameter `pos_embedding`, initialised N(0, 0.02²). With `posemb_cls_slot=True` (official
layout) it is [1, num_prefix_tokens + h*w, D] and its first rows belong to the class token;
otherwise [1, h*w, D] (big_vision layout) and the class token gets none.

At another grid the patch rows, viewed as [h, w, D], are resampled (`resize_posemb`, timm's
`resample_abs_pos_embed`); class-token rows are copied, dropped or added as zeros. This is the
only adaptation, whatever `posemb_mode` says: a learned table has no values outside its grid to
extrapolate with, so "extrapolate" resamples too. On restore the table is resized once; with
`dynamic_image_size` the stored table (model grid) is resized to each input's grid on the fly.
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
    factor_pairs,
    prefix_counts,
)
from vit_jax.models.resize import check_count, check_grid, resize_grid

PARAM = "pos_embedding"


def add(module: nn.Module, position: Position, x: jax.Array) -> jax.Array:
    """x [B, num_prefix_tokens + h*w, D] plus the learned table (stored for the parameter
    grid, resized to the tokens' grid if that differs)."""
    h, w = position.param_grid
    slot_rows = position.num_prefix_tokens if position.posemb_cls_slot else 0
    init = nn.initializers.normal(stddev=0.02)
    shape = (1, slot_rows + h * w, x.shape[-1])
    if module.has_variable("params", PARAM) and module.get_variable("params", PARAM).shape != shape:
        raise ValueError(
            f"the parameters hold a position table of shape "
            f"{module.get_variable('params', PARAM).shape}, made for another image size or "
            f"class-token slot than this model's {h}x{w} patch grid {shape}: adapt them with "
            "vit_jax.checkpoint.adapt_params(params, model, rng) or restore_into (both resize "
            "the table), or build the model for the size they were trained at."
        )
    pe = module.param(PARAM, init, shape, module.param_dtype)
    pe = adapt_to_tokens(RULE, pe, position, slot_rows)
    if position.posemb_cls_slot:
        return x + pe.astype(x.dtype)
    return add_to_patches(x, pe[0], position.num_prefix_tokens)


def add_to_patches(x: jax.Array, pe: jax.Array, num_prefix_tokens: int) -> jax.Array:
    """Adds pe [h*w, D] to the patch tokens of x [B, num_prefix_tokens + h*w, D] only."""
    prefix, patches = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
    return jnp.concatenate([prefix, patches + jnp.asarray(pe, x.dtype)[None]], axis=1)


def square_grid(num_positions: int, what: str) -> tuple[int, int]:
    """(n, n) for num_positions = n², else ValueError asking for the grid explicitly."""
    side = int(round(np.sqrt(max(num_positions, 0))))
    if num_positions < 1 or side * side != num_positions:
        raise ValueError(
            f"{what} has {num_positions} grid positions, which is not a square, so its patch "
            "grid is ambiguous: pass old_grid=(rows, cols)."
        )
    return (side, side)


def resize_posemb(
    posemb: jax.Array | np.ndarray,
    new_grid: tuple[int, int],
    *,
    num_prefix_tokens: int,
    old_grid: tuple[int, int] | None = None,
    new_num_prefix_tokens: int | None = None,
    method: str = "cubic",
    antialias: bool = True,
) -> jax.Array:
    """Resizes a learned position embedding to another patch grid.

    posemb: [1, num_prefix_tokens + h * w, D], prefix (class-token) rows first, then the grid
      row-major. num_prefix_tokens = 1 is the official layout (class slot), 0 big_vision's.
    new_grid: (h', w'). old_grid: (h, w), inferred as a square if not given.
    new_num_prefix_tokens: prefix rows of the result (default: as many as the input). Rows kept
      are copied untouched; added ones are zero (no position information for that token).
    method, antialias: see models/resize.py; `cubic` with antialias is timm's default.
    Returns [1, new_num_prefix_tokens + h' * w', D]. The same grid and prefix give the input.
    """
    posemb = jnp.asarray(posemb)
    if posemb.ndim != 3 or posemb.shape[0] != 1:
        raise ValueError(f"pos_embedding must be [1, rows, D]; got {tuple(posemb.shape)}.")
    check_count("num_prefix_tokens", num_prefix_tokens, posemb.shape[1])
    if new_num_prefix_tokens is None:
        new_num_prefix_tokens = num_prefix_tokens
    check_count("new_num_prefix_tokens", new_num_prefix_tokens)
    new_grid = check_grid("new_grid", new_grid)
    old_grid = None if old_grid is None else check_grid("old_grid", old_grid)
    prefix, grid = posemb[0, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
    if old_grid is None:
        old_grid = square_grid(grid.shape[0], f"pos_embedding {tuple(posemb.shape)}")
    h, w = old_grid
    if h * w != grid.shape[0]:
        raise ValueError(
            f"pos_embedding {tuple(posemb.shape)} with {num_prefix_tokens} prefix rows has "
            f"{grid.shape[0]} grid rows, which does not match old_grid={tuple(old_grid)}."
        )
    resized = resize_grid(grid.reshape(h, w, -1), tuple(new_grid), method, antialias)
    kept = prefix[:new_num_prefix_tokens]
    added = jnp.zeros((new_num_prefix_tokens - kept.shape[0], posemb.shape[-1]), posemb.dtype)
    rows = [kept, added, resized.reshape(-1, posemb.shape[-1])]
    return jnp.concatenate(rows, axis=0)[None]


def _resize(value, old: Layout, new: Layout, *, mode: str = "auto", **options) -> jax.Array:
    """The rule's resize; every mode resamples (a table has nothing to extrapolate with)."""
    return resize_posemb(value, new.grid, old_grid=old.grid, **prefix_counts(old, new), **options)


RULE = ParamRule(
    name=PARAM,
    variant="learned",
    axis=1,
    length=lambda layout: layout.num_prefix_tokens + layout.grid[0] * layout.grid[1],
    candidates=lambda length, prefix: factor_pairs(length - prefix),
    # Without a grid, the official layout: a model with a class token gave it a slot.
    prefix_hint=lambda length, has_class_token: int(has_class_token),
    resize=_resize,
)

VARIANT = Variant(
    "learned", "a learned table added to the tokens (official ViT)", add=add, params=(RULE,)
)
