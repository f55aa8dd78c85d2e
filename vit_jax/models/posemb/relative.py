"""`relative`: a learned bias per head for each 2D offset (Swin v1 / BEiT), on the logits.

For patch tokens i, j at grid positions (h, w) of an H x W grid, the logit q_i·k_j/√d gets
`table[idx(i, j), head]` added, with

    idx = (h_i - h_j + H - 1) * (2W - 1) + (w_i - w_j + W - 1)

so the table has (2H-1)(2W-1) rows. With a class token, three more rows follow (BEiT):
class->patch, patch->class and class->class. Each layer owns its table
(`relative_position_bias_table`, [(2H-1)(2W-1) (+3), heads]), initialised with a truncated normal
of std 0.02 as in Swin.

At another grid the patch part of the table, viewed as [2H-1, 2W-1, heads], is resized
(`resize_bias_table`, bicubic by default as in Swin v1); the class-token rows are kept.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models.posemb.base import Layout, ParamRule, Position, Variant, prefix_counts
from vit_jax.models.resize import check_count, check_grid, resize_grid

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


def resize_bias_table(
    table: jax.Array | np.ndarray,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    *,
    num_prefix_tokens: int,
    new_num_prefix_tokens: int | None = None,
    method: str = "cubic",
    antialias: bool = True,
) -> jax.Array:
    """Resizes a bias table [(2H-1)(2W-1) (+3), heads] of grid (H, W) to grid (H', W').

    The (2H-1) x (2W-1) offset grid is resampled to (2H'-1) x (2W'-1); the 3 class-token rows
    (present when num_prefix_tokens == 1) follow unchanged. new_num_prefix_tokens (default
    num_prefix_tokens) sets whether the result has them: rows dropped, or added as zeros.
    Returns [(2H'-1)(2W'-1) (+3), heads].
    """
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
    (h, w), (nh, nw) = old_grid, new_grid
    offsets = (2 * h - 1) * (2 * w - 1)
    patch = table[:offsets].reshape(2 * h - 1, 2 * w - 1, -1)
    patch = resize_grid(patch, (2 * nh - 1, 2 * nw - 1), method, antialias).reshape(
        -1, patch.shape[-1]
    )
    if not new_num_prefix_tokens:
        class_rows = table[:0]
    elif num_prefix_tokens:
        class_rows = table[offsets:]
    else:
        class_rows = jnp.zeros((CLASS_ROWS, table.shape[-1]), table.dtype)
    return jnp.concatenate([patch, class_rows], axis=0)


def bias(module: nn.Module, position: Position, num_heads: int) -> jax.Array:
    """The bias [heads, N, N] of every (query, key) pair, gathered from the learned table."""
    grid, prefix = position.grid, position.num_prefix_tokens
    table = module.param(
        PARAM,
        nn.initializers.truncated_normal(stddev=0.02),
        (num_relative_positions(grid, prefix), num_heads),
        module.param_dtype,
    )
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


def _resize(value, old: Layout, new: Layout, **options) -> jax.Array:
    return resize_bias_table(value, old.grid, new.grid, **prefix_counts(old, new), **options)


RULE = ParamRule(
    name=PARAM,
    variant="relative",
    axis=0,
    length=lambda layout: num_relative_positions(layout.grid, layout.num_prefix_tokens),
    candidates=_candidates,
    # (2H-1)(2W-1) is odd: an even row count means the 3 class-token rows follow.
    prefix_hint=lambda length, has_class_token: int(length % 2 == 0),
    resize=_resize,
)

VARIANT = Variant(
    "relative", "learned bias per 2D offset on the logits (Swin)", bias=bias, params=(RULE,)
)
