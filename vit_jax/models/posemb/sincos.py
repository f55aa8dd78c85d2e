"""`sincos1d` and `sincos2d`: fixed sinusoids added to the patch tokens (nothing is stored).

- `sincos1d`: Vaswani et al.: PE(p, 2i) = sin(p / T^(2i/D)), PE(p, 2i+1) = cos(same), p the
  row-major index of the patch.
- `sincos2d`: the big_vision / MoCo v3 convention: channels split in four blocks
  [sin(x ω), cos(x ω), sin(y ω), cos(y ω)], x the column, y the row, ω_k = T^(-k / (D/4 - 1)).

T is the `posemb_temperature` model field. The class token gets no embedding.

On a grid other than the reference grid (`posemb_grid`, else the model's), the sinusoids are
computed at the positions `posemb_mode` gives (base.py): "extrapolate" (and "auto") the integer
indices of the new grid; "interpolate" positions scaled to the reference's range with the
half-pixel centres of the table resize. `sincos2d` scales each axis (cell i of an n-cell axis
at (i + 0.5) * m / n - 0.5, m the reference's length). `sincos1d` knows only the flattened
row-major index, so it scales that one axis: p' = (p + 0.5) * M / N - 0.5 with N = h*w and
M the reference's h*w. That keeps the range of indices it was trained on but cannot map 2-D
cells exactly (a row of the new grid does not land on a row of the reference); only sincos2d
interpolates per cell.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

from vit_jax.models.posemb.base import Position, Variant, axis_coordinates, grid_coordinates
from vit_jax.models.posemb.learned import add_to_patches


def sincos1d_at(positions: np.ndarray, dim: int, temperature: float = 10_000.0) -> np.ndarray:
    """Vaswani sinusoids [n, dim] of positions [n] (any float): even channels sin, odd cos."""
    positions = np.asarray(positions, np.float64)[:, None]
    inv_freq = temperature ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = positions * inv_freq[None, :]
    pe = np.zeros((positions.shape[0], dim), np.float64)
    pe[:, 0::2] = np.sin(angles)
    pe[:, 1::2] = np.cos(angles)
    return pe.astype(np.float32)


def sincos1d(num_positions: int, dim: int, temperature: float = 10_000.0) -> np.ndarray:
    """`sincos1d_at` of the integer positions 0 .. num_positions - 1: [num_positions, dim]."""
    return sincos1d_at(np.arange(num_positions), dim, temperature)


def sincos2d_at(
    x: np.ndarray, y: np.ndarray, dim: int, temperature: float = 10_000.0
) -> np.ndarray:
    """2D sinusoids [n, dim] of the points (x [n], y [n]); blocks [sin x, cos x, sin y, cos y]."""
    quarter = dim // 4
    omega = temperature ** (-np.arange(quarter, dtype=np.float64) / (quarter - 1))
    xw = np.asarray(x, np.float64).reshape(-1, 1) * omega[None, :]
    yw = np.asarray(y, np.float64).reshape(-1, 1) * omega[None, :]
    pe = np.concatenate([np.sin(xw), np.cos(xw), np.sin(yw), np.cos(yw)], axis=1)
    return pe.astype(np.float32)


def sincos2d(grid: tuple[int, int], dim: int, temperature: float = 10_000.0) -> np.ndarray:
    """2D sinusoids [h * w, dim] of the integer cells of `grid`, row-major over (y, x)."""
    return sincos2d_at(*grid_coordinates(grid), dim, temperature)


def _add_1d(module: nn.Module, position: Position, x: jax.Array) -> jax.Array:
    (h, w), (rh, rw) = position.grid, position.reference_grid
    positions = axis_coordinates(h * w, rh * rw, position.mode)
    pe = sincos1d_at(positions, x.shape[-1], position.posemb_temperature)
    return add_to_patches(x, pe, position.num_prefix_tokens)


def _add_2d(module: nn.Module, position: Position, x: jax.Array) -> jax.Array:
    pe = sincos2d_at(*position.coordinates(), x.shape[-1], position.posemb_temperature)
    return add_to_patches(x, pe, position.num_prefix_tokens)


def _check_1d(model) -> None:
    if model.hidden_size % 2:
        raise ValueError(
            f"posemb='sincos1d' needs an even hidden_size; got hidden_size={model.hidden_size}."
        )


def _check_2d(model) -> None:
    if model.hidden_size % 4 or model.hidden_size < 8:
        raise ValueError(
            "posemb='sincos2d' splits hidden_size in four sin/cos blocks of at least 2 channels, "
            f"so it needs hidden_size % 4 == 0 and >= 8; got hidden_size={model.hidden_size}."
        )


SINCOS1D = Variant(
    "sincos1d",
    "fixed 1D sinusoids of the patch index",
    add=_add_1d,
    check=_check_1d,
    positions=True,
)
SINCOS2D = Variant(
    "sincos2d", "fixed 2D sinusoids (big_vision)", add=_add_2d, check=_check_2d, positions=True
)
