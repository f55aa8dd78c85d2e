"""Resampling of parameter grids: the one resize that every adaptation to a new grid goes through.

Position embeddings (posemb/), relative-bias tables (posemb/relative.py) and patch-embedding kernels
(patch_embed.py) are all arrays whose leading axes are a spatial grid; `resize_grid` resamples
those axes. Methods and the PyTorch/timm resizes they reproduce (half-pixel centres):

- `nearest`, `linear`, `cubic`, `lanczos3`, `lanczos5`: `jax.image.resize` exactly.
  `linear` matches torch's `bilinear` (align_corners=False) with the same `antialias`;
  `cubic` with antialias=True matches torch's `bicubic` with antialias=True, timm's default for
  `resample_abs_pos_embed` (Keys cubic, a = -0.5, weights renormalised at the border).
- `cubic-pytorch`: torch's `bicubic` with the given `antialias`. Without antialiasing (DeiT, MAE,
  Swin v1, Hugging Face) torch uses the Keys cubic with a = -0.75 and clamps source indices at the
  border, which jax.image has no kernel for; it is built here as a resampling matrix per axis.
  With antialias=True torch switches to the a = -0.5 kernel, i.e. `cubic` above.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.options import unknown_choice

JAX_METHODS = ("nearest", "linear", "cubic", "lanczos3", "lanczos5")
RESIZE_METHODS = (*JAX_METHODS, "cubic-pytorch")
# What restore resamples grids with unless told otherwise (timm's default).
DEFAULT_METHOD, DEFAULT_ANTIALIAS = "cubic", True
_PYTORCH_CUBIC_A = -0.75


def check_method(method: str) -> None:
    """Raises ValueError naming the valid methods if `method` is unknown."""
    if method not in RESIZE_METHODS:
        raise unknown_choice("resize method", method, RESIZE_METHODS)


def check_grid(name: str, grid, dims: int = 2) -> tuple[int, ...]:
    """`grid` as a tuple of `dims` positive ints, or ValueError naming it."""
    try:
        pair = tuple(int(n) for n in grid)
        ok = len(pair) == dims and all(n >= 1 and n == m for n, m in zip(pair, grid, strict=True))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name}={grid!r} must be {dims} positive integers (rows, cols).")
    return pair


def check_count(name: str, value, high: int | None = None) -> int:
    """`value` as an int in [0, high], or ValueError naming it."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name}={value!r} must be an integer >= 0.")
    if high is not None and value > high:
        raise ValueError(f"{name}={value} is more than the {high} rows there are.")
    return value


def pytorch_cubic_matrix(old: int, new: int) -> np.ndarray:
    """Matrix [new, old] of torch's 1D bicubic resize (align_corners=False, no antialias).

    Output j samples the input at s = (j + 0.5) * old / new - 0.5 with the Keys kernel
    (a = -0.75) on the taps floor(s) - 1 .. floor(s) + 2, indices clamped to [0, old - 1].
    """
    src = (np.arange(new, dtype=np.float64) + 0.5) * (old / new) - 0.5
    base = np.floor(src)
    matrix = np.zeros((new, old), np.float64)
    for offset in range(-1, 3):
        distance = np.abs(src - (base + offset))
        matrix[np.arange(new), np.clip(base + offset, 0, old - 1).astype(int)] += _keys(distance)
    return matrix


def _keys(x: np.ndarray, a: float = _PYTORCH_CUBIC_A) -> np.ndarray:
    """Keys' cubic convolution kernel at distances x >= 0."""
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def resize_grid(
    array: jax.Array | np.ndarray,
    new_grid: tuple[int, ...],
    method: str = "cubic",
    antialias: bool = True,
) -> jax.Array:
    """Resamples the leading len(new_grid) axes of `array` [*grid, ...] to `new_grid`.

    One or two grid axes (a table [n, D] or a grid [h, w, ...]); trailing axes are channels.
    Computes in float32 and returns the input dtype. The same grid returns the input unchanged.
    """
    check_method(method)
    array = jnp.asarray(array)
    new_grid = check_grid("new_grid", new_grid, len(tuple(new_grid)) or 1)
    if array.ndim < len(new_grid) or 0 in array.shape[: len(new_grid)]:
        raise ValueError(
            f"cannot resize an array of shape {tuple(array.shape)} over {len(new_grid)} grid axes."
        )
    grid = tuple(array.shape[: len(new_grid)])
    if grid == new_grid:
        return array
    x = array.astype(jnp.float32)
    if method != "cubic-pytorch" or antialias:
        method = "cubic" if method == "cubic-pytorch" else method
        out = jax.image.resize(x, new_grid + x.shape[len(new_grid) :], method, antialias=antialias)
        return out.astype(array.dtype)
    for axis, (old, new) in enumerate(zip(grid, new_grid, strict=True)):
        matrix = jnp.asarray(pytorch_cubic_matrix(old, new), jnp.float32)
        x = jnp.moveaxis(
            jnp.tensordot(matrix, x, axes=(1, axis), precision=jax.lax.Precision.HIGHEST), 0, axis
        )
    return x.astype(array.dtype)


def resize_matrix(
    old_grid: tuple[int, ...], new_grid: tuple[int, ...], method: str, antialias: bool
) -> np.ndarray:
    """The linear map of `resize_grid` as a matrix [prod(new_grid), prod(old_grid)] (float64),
    acting on row-major flattened grids: resize(x).ravel() == matrix @ x.ravel()."""
    size = int(np.prod(old_grid))
    basis = np.eye(size, dtype=np.float32).reshape(*old_grid, size)
    columns = resize_grid(basis, new_grid, method, antialias)
    return np.asarray(columns, np.float64).reshape(-1, size)
