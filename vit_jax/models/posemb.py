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

Adaptation to another patch grid (used when a checkpoint is restored at a new resolution):
`resize_posemb` for `learned` (either layout in or out), `resize_factorized` for each factorized
table; the fixed variants need none.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models.resize import resize_grid

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


def square_grid(num_positions: int, what: str) -> tuple[int, int]:
    """(n, n) for num_positions = n², else ValueError asking for the grid explicitly."""
    side = int(round(np.sqrt(num_positions)))
    if side * side != num_positions:
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
    new_prefix_tokens: int | None = None,
    method: str = "cubic",
    antialias: bool = True,
) -> jax.Array:
    """Resizes a learned position embedding to another patch grid.

    posemb: [1, num_prefix_tokens + h * w, D], prefix (class-token) rows first, then the grid
      row-major. num_prefix_tokens = 1 is the official layout (class slot), 0 big_vision's.
    new_grid: (h', w'). old_grid: (h, w), inferred as a square if not given.
    new_prefix_tokens: prefix rows of the result (default: as many as the input). Rows kept are
      copied untouched; added ones are zero (no position information for that token).
    method, antialias: see models/resize.py; `cubic` with antialias is timm's default.
    Returns [1, new_prefix_tokens + h' * w', D]. The same grid and prefix give the input back.
    """
    posemb = jnp.asarray(posemb)
    new_prefix_tokens = num_prefix_tokens if new_prefix_tokens is None else new_prefix_tokens
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
    kept = prefix[:new_prefix_tokens]
    added = jnp.zeros((new_prefix_tokens - kept.shape[0], posemb.shape[-1]), posemb.dtype)
    rows = [kept, added, resized.reshape(-1, posemb.shape[-1])]
    return jnp.concatenate(rows, axis=0)[None]


def resize_factorized(
    table: jax.Array | np.ndarray, new_length: int, *, method: str = "cubic", antialias: bool = True
) -> jax.Array:
    """1D resize of a factorized table (`row_embedding` [h, D_r] or `col_embedding` [w, D_c])
    to [new_length, D_*]."""
    return resize_grid(table, (new_length,), method, antialias)
