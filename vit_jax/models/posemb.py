"""Additive position embeddings: added once to the tokens before the first encoder block.

Variants (the `posemb=` model field; attention-level variants live in relpos.py and rope.py):

- `none`:       no position information; the encoder is then permutation-equivariant.
- `learned`:    parameter `pos_embedding`, initialised N(0, 0.02²) as in the official ViT.
                With `posemb_cls_slot=True` (official layout) it is [1, 1 + N, D] and row 0 is the
                class token's; otherwise [1, N, D] (big_vision layout): the class token gets none.
- `sincos1d`:   fixed, Vaswani et al.: PE(p, 2i) = sin(p / T^(2i/D)), PE(p, 2i+1) = cos(same),
                p the row-major index of the patch.
- `sincos2d`:   fixed, the big_vision / MoCo v3 convention: channels split in four blocks
                [sin(x ω), cos(x ω), sin(y ω), cos(y ω)], x the column, y the row,
                ω_k = T^(-k / (D/4 - 1)) for k < D/4.
- `factorized`: learned row table [h, D_r] and column table [w, D_c] (the ViT paper's "2-D"):
                `concat` gives each patch [row_i, col_j] with D_r = D_c = D/2; `sum` gives
                row_i + col_j with two [·, D] tables. Both initialised N(0, 0.02²).

Fixed embeddings are not parameters: they are recomputed for whatever grid the model is built for.
The class token (if any) never gets a fixed or factorized embedding.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ADDITIVE_POSEMBS = ("none", "learned", "sincos1d", "sincos2d", "factorized")
FACTORIZED_MODES = ("concat", "sum")


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


def check_additive(kind: str, dim: int, factorized_mode: str) -> None:
    """Raises ValueError if the additive variant cannot be built with width `dim`."""
    if kind not in ADDITIVE_POSEMBS:
        raise ValueError(f"posemb={kind!r} is unknown; additive ones are {ADDITIVE_POSEMBS}.")
    if kind == "sincos1d" and dim % 2:
        raise ValueError(f"posemb='sincos1d' needs an even hidden_size; got hidden_size={dim}.")
    if kind == "sincos2d" and (dim % 4 or dim < 8):
        raise ValueError(
            f"posemb='sincos2d' splits hidden_size in four sin/cos blocks of at least 2 channels, "
            f"so it needs hidden_size % 4 == 0 and >= 8; got hidden_size={dim}."
        )
    if kind == "factorized":
        if factorized_mode not in FACTORIZED_MODES:
            raise ValueError(
                f"posemb_factorized={factorized_mode!r} is unknown; use one of {FACTORIZED_MODES}."
            )
        if factorized_mode == "concat" and dim % 2:
            raise ValueError(
                "posemb='factorized' with posemb_factorized='concat' gives half the channels to "
                f"rows and half to columns, so hidden_size must be even; got {dim}. "
                "Use posemb_factorized='sum' or an even width."
            )


class AddPositionEmbedding(nn.Module):
    """Adds an additive position embedding to tokens [B, num_prefix + h*w, D].

    Instantiate with name="posembed_input" to match the official checkpoint layout.
    """

    kind: str
    grid: tuple[int, int]
    num_prefix: int
    cls_slot: bool = True
    factorized_mode: str = "concat"
    temperature: float = 10_000.0
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        h, w = self.grid
        init = nn.initializers.normal(stddev=0.02)
        if self.kind == "learned":
            rows = h * w + (self.num_prefix if self.cls_slot else 0)
            pe = self.param("pos_embedding", init, (1, rows, dim), self.param_dtype)
            if self.cls_slot:
                return x + pe.astype(x.dtype)
            return self._add_to_patches(x, pe[0])
        if self.kind == "sincos1d":
            return self._add_to_patches(x, sincos1d(h * w, dim, self.temperature))
        if self.kind == "sincos2d":
            return self._add_to_patches(x, sincos2d(self.grid, dim, self.temperature))
        if self.kind == "factorized":
            table_dim = dim // 2 if self.factorized_mode == "concat" else dim
            row = self.param("row_embedding", init, (h, table_dim), self.param_dtype)
            col = self.param("col_embedding", init, (w, table_dim), self.param_dtype)
            return self._add_to_patches(x, factorized_table(row, col, self.factorized_mode))
        return x

    def _add_to_patches(self, x: jax.Array, pe: jax.Array) -> jax.Array:
        """Adds pe [h*w, D] to the patch tokens only, leaving the prefix (class) tokens alone."""
        prefix, patches = x[:, : self.num_prefix], x[:, self.num_prefix :]
        return jnp.concatenate([prefix, patches + jnp.asarray(pe, x.dtype)[None]], axis=1)
