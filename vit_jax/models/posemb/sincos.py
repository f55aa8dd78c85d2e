"""`sincos1d` and `sincos2d`: fixed sinusoids added to the patch tokens (nothing is stored).

- `sincos1d`: Vaswani et al.: PE(p, 2i) = sin(p / T^(2i/D)), PE(p, 2i+1) = cos(same), p the
  row-major index of the patch.
- `sincos2d`: the big_vision / MoCo v3 convention: channels split in four blocks
  [sin(x ω), cos(x ω), sin(y ω), cos(y ω)], x the column, y the row, ω_k = T^(-k / (D/4 - 1)).

T is the `posemb_temperature` model field. The class token gets no embedding. At another grid the
sinusoids are simply computed for that grid.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

from vit_jax.models.posemb.base import Position, Variant
from vit_jax.models.posemb.learned import add_to_patches


def sincos1d(num_positions: int, dim: int, temperature: float = 10_000.0) -> np.ndarray:
    """Vaswani sinusoids [num_positions, dim]: even channels sin, odd channels cos."""
    positions = np.arange(num_positions, dtype=np.float64)[:, None]
    inv_freq = temperature ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = positions * inv_freq[None, :]
    pe = np.zeros((num_positions, dim), np.float64)
    pe[:, 0::2] = np.sin(angles)
    pe[:, 1::2] = np.cos(angles)
    return pe.astype(np.float32)


def sincos2d(grid: tuple[int, int], dim: int, temperature: float = 10_000.0) -> np.ndarray:
    """2D sinusoids [h * w, dim], row-major over (y, x); blocks [sin x, cos x, sin y, cos y]."""
    h, w = grid
    y, x = np.meshgrid(
        np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij"
    )
    quarter = dim // 4
    omega = temperature ** (-np.arange(quarter, dtype=np.float64) / (quarter - 1))
    xw = x.reshape(-1, 1) * omega[None, :]
    yw = y.reshape(-1, 1) * omega[None, :]
    pe = np.concatenate([np.sin(xw), np.cos(xw), np.sin(yw), np.cos(yw)], axis=1)
    return pe.astype(np.float32)


def _add_1d(module: nn.Module, position: Position, x: jax.Array) -> jax.Array:
    h, w = position.grid
    pe = sincos1d(h * w, x.shape[-1], position.posemb_temperature)
    return add_to_patches(x, pe, position.num_prefix_tokens)


def _add_2d(module: nn.Module, position: Position, x: jax.Array) -> jax.Array:
    pe = sincos2d(position.grid, x.shape[-1], position.posemb_temperature)
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
    "sincos1d", "fixed 1D sinusoids of the patch index", add=_add_1d, check=_check_1d
)
SINCOS2D = Variant("sincos2d", "fixed 2D sinusoids (big_vision)", add=_add_2d, check=_check_2d)
