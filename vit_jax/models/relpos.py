"""Relative position bias (Swin v1 / BEiT): a learned bias per head for each 2D offset.

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

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models.resize import resize_grid


def num_relative_positions(grid: tuple[int, int], num_prefix: int) -> int:
    """Rows of the bias table for a grid, plus 3 class-token rows when num_prefix == 1."""
    h, w = grid
    return (2 * h - 1) * (2 * w - 1) + (3 if num_prefix else 0)


def relative_position_index(grid: tuple[int, int], num_prefix: int) -> np.ndarray:
    """Table row for every (query, key) pair: int32 [num_prefix + h*w, num_prefix + h*w]."""
    h, w = grid
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy = ys[:, None] - ys[None, :] + h - 1
    dx = xs[:, None] - xs[None, :] + w - 1
    patch_index = dy * (2 * w - 1) + dx
    if not num_prefix:
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
    num_prefix: int,
    new_num_prefix: int | None = None,
    method: str = "cubic",
    antialias: bool = True,
) -> jax.Array:
    """Resizes a bias table [(2H-1)(2W-1) (+3), heads] of grid (H, W) to grid (H', W').

    The (2H-1) x (2W-1) offset grid is resampled to (2H'-1) x (2W'-1); the 3 class-token rows
    (present when num_prefix == 1) follow unchanged. new_num_prefix (default num_prefix) sets
    whether the result has them: rows dropped, or added as zeros (no bias).
    Returns [(2H'-1)(2W'-1) (+3), heads].
    """
    table = jnp.asarray(table)
    new_num_prefix = num_prefix if new_num_prefix is None else new_num_prefix
    expected = num_relative_positions(old_grid, num_prefix)
    if table.shape[0] != expected:
        raise ValueError(
            f"relative_position_bias_table {tuple(table.shape)} does not fit grid "
            f"{tuple(old_grid)} with num_prefix={num_prefix}: it needs {expected} rows."
        )
    (h, w), (nh, nw) = old_grid, new_grid
    offsets = (2 * h - 1) * (2 * w - 1)
    patch = table[:offsets].reshape(2 * h - 1, 2 * w - 1, -1)
    patch = resize_grid(patch, (2 * nh - 1, 2 * nw - 1), method, antialias).reshape(
        -1, patch.shape[-1]
    )
    if not new_num_prefix:
        class_rows = table[:0]
    elif num_prefix:
        class_rows = table[offsets:]
    else:
        class_rows = jnp.zeros((3, table.shape[-1]), table.dtype)
    return jnp.concatenate([patch, class_rows], axis=0)
