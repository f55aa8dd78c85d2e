"""`relative`: a learned bias per head for each 2D offset (Swin v1 / BEiT), on the logits.

For patch tokens i, j at grid positions (h, w) of an H x W grid, the logit q_i·k_j/√d gets
`table[idx(i, j), head]` added, with

    idx = (h_i - h_j + H - 1) * (2W - 1) + (w_i - w_j + W - 1)

so the table has (2H-1)(2W-1) rows. With a class token, three more rows follow (BEiT):
class->patch, patch->class and class->class. Each layer owns its table
(`relative_position_bias_table`, [(2H-1)(2W-1) (+3), heads]), initialised with a truncated normal
of std 0.02 as in Swin.

At another grid the patch part of the table, viewed as [2H-1, 2W-1, heads], is adapted as the
model's `posemb_mode` says; the class-token rows are kept:

- "auto" / "interpolate": resized (`resize_bias_table`, bicubic by default as in Swin v1): the
  offsets spread over the new grid, each a resampled bias;
- "extrapolate": `extrapolate_bias_table`: every offset the table was trained on keeps its
  bias and farther ones take the bias at the table's edge (edge-padded for a larger grid,
  centre-cropped for a smaller one).

On restore the table is adapted once; with `dynamic_image_size` the stored table (model grid)
is adapted to each input's grid on the fly, by the same rule.
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
    prefix_counts,
    resolved_mode,
)
from vit_jax.models.resize import (
    DEFAULT_ANTIALIAS,
    DEFAULT_METHOD,
    check_count,
    check_grid,
    resize_grid,
)

PARAM = "relative_position_bias_table"
CLASS_ROWS = 3  # class->patch, patch->class, class->class


def num_relative_positions(grid: tuple[int, int], num_prefix_tokens: int) -> int:
    """Rows of the bias table for a grid, plus 3 class-token rows with a class token."""
    h, w = grid
    return (2 * h - 1) * (2 * w - 1) + (CLASS_ROWS if num_prefix_tokens else 0)


def relative_position_index(grid: tuple[int, int], num_prefix_tokens: int) -> np.ndarray:
    """Table row for every (query, key) pair: int32 [num_prefix_tokens + h*w, same]."""
    h, w = grid
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy = ys[:, None] - ys[None, :] + h - 1
    dx = xs[:, None] - xs[None, :] + w - 1
    patch_index = dy * (2 * w - 1) + dx
    if not num_prefix_tokens:
        return patch_index.astype(np.int32)
    num_patch_rel = (2 * h - 1) * (2 * w - 1)
    n = h * w + 1
    index = np.empty((n, n), np.int64)
    index[1:, 1:] = patch_index
    index[0, 1:] = num_patch_rel  # class token attending to patches
    index[1:, 0] = num_patch_rel + 1  # patches attending to the class token
    index[0, 0] = num_patch_rel + 2
    return index.astype(np.int32)


def _split_table(
    table: jax.Array | np.ndarray,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    num_prefix_tokens: int,
    new_num_prefix_tokens: int | None,
) -> tuple[jax.Array, jax.Array, tuple[int, int]]:
    """Checks a bias table [(2H-1)(2W-1) (+3), heads] of `old_grid` and the arguments of a move
    to `new_grid`. Returns its offsets [2H-1, 2W-1, heads], the class-token rows the result has
    ([3, heads]: the stored ones, or zeros where the table had none; [0, heads] without a class
    token) and the checked new grid."""
    table = jnp.asarray(table)
    if table.ndim != 2:
        raise ValueError(f"a bias table must be [rows, heads]; got {tuple(table.shape)}.")
    old_grid, new_grid = check_grid("old_grid", old_grid), check_grid("new_grid", new_grid)
    check_count("num_prefix_tokens", num_prefix_tokens)
    if new_num_prefix_tokens is None:
        new_num_prefix_tokens = num_prefix_tokens
    check_count("new_num_prefix_tokens", new_num_prefix_tokens)
    expected = num_relative_positions(old_grid, num_prefix_tokens)
    if table.shape[0] != expected:
        raise ValueError(
            f"relative_position_bias_table {tuple(table.shape)} does not fit grid "
            f"{tuple(old_grid)} with num_prefix_tokens={num_prefix_tokens}: it needs "
            f"{expected} rows."
        )
    h, w = old_grid
    num_offsets = (2 * h - 1) * (2 * w - 1)
    offsets = table[:num_offsets].reshape(2 * h - 1, 2 * w - 1, -1)
    if not new_num_prefix_tokens:
        class_rows = table[:0]
    elif num_prefix_tokens:
        class_rows = table[num_offsets:]
    else:
        class_rows = jnp.zeros((CLASS_ROWS, table.shape[-1]), table.dtype)
    return offsets, class_rows, new_grid


def resize_bias_table(
    table: jax.Array | np.ndarray,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    *,
    num_prefix_tokens: int,
    new_num_prefix_tokens: int | None = None,
    method: str = DEFAULT_METHOD,
    antialias: bool = DEFAULT_ANTIALIAS,
) -> jax.Array:
    """Resizes (interpolates) a bias table [(2H-1)(2W-1) (+3), heads] of grid (H, W) to grid
    (H', W').

    The (2H-1) x (2W-1) offset grid is resampled to (2H'-1) x (2W'-1); the 3 class-token rows
    (present when num_prefix_tokens == 1) follow unchanged. new_num_prefix_tokens (default
    num_prefix_tokens) sets whether the result has them: rows dropped, or added as zeros.
    Returns [(2H'-1)(2W'-1) (+3), heads].
    """
    offsets, class_rows, (nh, nw) = _split_table(
        table, old_grid, new_grid, num_prefix_tokens, new_num_prefix_tokens
    )
    resized = resize_grid(offsets, (2 * nh - 1, 2 * nw - 1), method, antialias)
    return jnp.concatenate([resized.reshape(-1, offsets.shape[-1]), class_rows], axis=0)


def clamped_offsets(length: int, new_length: int) -> np.ndarray:
    """For each offset d = -(new_length-1) .. new_length-1 of a new axis, the row of a stored
    offset axis (offsets -(length-1) .. length-1) it reads: d clamped to the stored range.
    int [2 * new_length - 1]; the identity when the lengths agree."""
    d = np.arange(2 * new_length - 1) - (new_length - 1)
    return np.clip(d, -(length - 1), length - 1) + length - 1


def extrapolate_bias_table(
    table: jax.Array | np.ndarray,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    *,
    num_prefix_tokens: int,
    new_num_prefix_tokens: int | None = None,
) -> jax.Array:
    """Extrapolates a bias table [(2H-1)(2W-1) (+3), heads] of grid (H, W) to grid (H', W'):
    every offset the stored table has keeps its trained bias; a farther offset takes the bias
    of the nearest stored one, i.e. each offset axis is clamped to the stored range
    (`clamped_offsets`). The (2H-1) x (2W-1) offset grid is edge-padded for a larger grid and
    centre-cropped for a smaller one. Class-token rows as in `resize_bias_table`.
    Returns [(2H'-1)(2W'-1) (+3), heads].
    """
    offsets, class_rows, (nh, nw) = _split_table(
        table, old_grid, new_grid, num_prefix_tokens, new_num_prefix_tokens
    )
    h, w = old_grid
    moved = offsets[clamped_offsets(h, nh)][:, clamped_offsets(w, nw)]
    return jnp.concatenate([moved.reshape(-1, offsets.shape[-1]), class_rows], axis=0)


def bias(module: nn.Module, position: Position, num_heads: int) -> jax.Array:
    """The bias [heads, N, N] of every (query, key) pair, gathered from the learned table
    (stored for the parameter grid, adapted to the tokens' grid if that differs)."""
    grid, prefix = position.grid, position.num_prefix_tokens
    table = module.param(
        PARAM,
        nn.initializers.truncated_normal(stddev=0.02),
        (num_relative_positions(position.param_grid, prefix), num_heads),
        module.param_dtype,
    )
    table = adapt_to_tokens(RULE, table, position, prefix)
    index = relative_position_index(grid, prefix)
    return jnp.transpose(table[index].astype(jnp.float32), (2, 0, 1))


def _candidates(length: int, prefix: int) -> set:
    """Grids (H, W) with (2H-1)(2W-1) == length - class rows."""
    offsets = length - CLASS_ROWS * prefix
    return {
        ((a + 1) // 2, (offsets // a + 1) // 2)
        for a in range(1, offsets + 1, 2)
        if offsets % a == 0 and (offsets // a) % 2
    }


def _resize(
    value, old: Layout, new: Layout, *, method: str, antialias: bool, mode: str = "auto"
) -> jax.Array:
    """The rule's adaptation: resize ("auto", "interpolate") or clamp ("extrapolate")."""
    if resolved_mode(mode, "interpolate") == "extrapolate":
        return extrapolate_bias_table(value, old.grid, new.grid, **prefix_counts(old, new))
    return resize_bias_table(
        value, old.grid, new.grid, **prefix_counts(old, new), method=method, antialias=antialias
    )


RULE = ParamRule(
    name=PARAM,
    variant="relative",
    axis=0,
    length=lambda layout: num_relative_positions(layout.grid, layout.num_prefix_tokens),
    candidates=_candidates,
    # (2H-1)(2W-1) is odd: an even row count means the 3 class-token rows follow.
    prefix_hint=lambda length, has_class_token: int(length % 2 == 0),
    resize=_resize,
    extrapolates=True,
)

VARIANT = Variant(
    "relative", "learned bias per 2D offset on the logits (Swin)", bias=bias, params=(RULE,)
)
