"""2D rotary position embeddings (RoPE) for images, applied to queries and keys.

q and k of head dimension d are viewed as d/2 rotation pairs of adjacent channels (2j, 2j+1);
pair j of the token at column x and row y is rotated by an angle a_j(x, y). Then
<R(p_i) q, R(p_j) k> depends on positions only through p_i - p_j: the attention logit between two
patches is a function of their 2D offset. Prefix (class) tokens are not rotated; v never is.

- `rope_axial` (rope-vit "RoPE-Axial", EVA-02): f_k = θ^(-4k/d) for k < d/4; the first d/4 pairs
  rotate by x·f_k and the last d/4 by y·f_k. Nothing is learned.
- `rope_mixed` (rope-vit "RoPE-Mixed"): a_j = x·fx_j + y·fy_j with learnable frequencies per layer
  and head (`rope_frequencies`, [2, heads, d/2]), initialised with magnitudes θ^(-4k/d) along a
  random direction per head (and its perpendicular), as in Heo et al. 2024.

θ is the `rope_theta` model field. Nothing in a checkpoint depends on the grid. On a grid other
than the reference grid (`posemb_grid`, else the model's), x and y are the positions
`posemb_mode` gives (base.py): "extrapolate" (and "auto") the integer cells of the new grid,
"interpolate" each axis scaled to the reference's range with the half-pixel centres of the
table resize (the idea of EVA / timm's `ref_feat_shape`, centred like a resized table).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models.posemb.base import Position, Variant, grid_independent, sum_batch

FREQUENCIES = "rope_frequencies"
Coordinates = tuple[np.ndarray, np.ndarray]  # column x and row y of each patch, [N] each


def axial_angles(coordinates: Coordinates, head_dim: int, theta: float) -> np.ndarray:
    """Rotation angles [N, head_dim / 2] of RoPE-Axial at the patch positions (x, y) [N]
    (`Position.coordinates`, or `base.grid_coordinates(grid)` for integer cells)."""
    x, y = (np.asarray(c, np.float64) for c in coordinates)
    freqs = theta ** (-4.0 * np.arange(head_dim // 4) / head_dim)
    return np.concatenate([x[:, None] * freqs, y[:, None] * freqs], axis=1).astype(np.float32)


def mixed_frequencies_init(theta: float):
    """Initializer for RoPE-Mixed frequencies [2, heads, head_dim / 2] (fx, fy)."""

    def init(key: jax.Array, shape: tuple[int, int, int], dtype=jnp.float32) -> jax.Array:
        _, heads, half = shape
        magnitudes = theta ** (-4.0 * jnp.arange(half // 2) / (2 * half))
        phase = jax.random.uniform(key, (heads, 1)) * 2 * jnp.pi
        fx = jnp.concatenate(
            [magnitudes * jnp.cos(phase), magnitudes * jnp.cos(phase + jnp.pi / 2)], -1
        )
        fy = jnp.concatenate(
            [magnitudes * jnp.sin(phase), magnitudes * jnp.sin(phase + jnp.pi / 2)], -1
        )
        return jnp.stack([fx, fy]).astype(dtype)

    return init


def mixed_angles(coordinates: Coordinates, frequencies: jax.Array) -> jax.Array:
    """RoPE-Mixed angles [N, heads, d / 2] at the patch positions (x, y) [N] from frequencies
    [2, heads, d / 2]."""
    x, y = (np.asarray(c, np.float32) for c in coordinates)
    fx, fy = frequencies[0].astype(jnp.float32), frequencies[1].astype(jnp.float32)
    return x[:, None, None] * fx[None] + y[:, None, None] * fy[None]


def cos_sin(angles: jax.Array) -> jax.Array:
    """[cos(angles), sin(angles)], computed once into a buffer of their own.

    Left to itself, XLA fuses the cosine and sine into each consumer that broadcasts them over
    the batch and evaluates them again for every example. A product with the identity is
    exact and is a fusion boundary XLA keeps (an optimization barrier is not: XLA:CPU removes
    it before fusing); on ViT-S/16 shapes it makes RoPE-Mixed's rotation of q and k, forward
    and backward, 3.5x faster."""
    table = jnp.stack([jnp.cos(angles), jnp.sin(angles)]).astype(jnp.float32)
    flat = table.reshape(-1, table.shape[-1])
    eye = jnp.eye(table.shape[-1], dtype=jnp.float32)
    return jnp.dot(flat, eye, precision=jax.lax.Precision.HIGHEST).reshape(table.shape)


def _pairs(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Channels 2j and 2j + 1 of x [..., d], in float32: two [..., d/2]."""
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    return pairs[..., 0], pairs[..., 1]


def _turn(x: jax.Array, cos: jax.Array, sin: jax.Array, num_prefix_tokens: int) -> jax.Array:
    """x [B, N, heads, d] with each channel pair of its patch tokens rotated by the angle of
    `cos`, `sin` [N - num_prefix_tokens, heads or 1, d/2]; prefix tokens as they are."""
    prefix, tokens = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
    even, odd = _pairs(tokens)
    rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
    return jnp.concatenate([prefix, rotated.reshape(tokens.shape).astype(x.dtype)], axis=1)


def rotate(x: jax.Array, angles: jax.Array, num_prefix_tokens: int) -> jax.Array:
    """Rotates adjacent channel pairs of the patch tokens of x [B, N, heads, d].

    angles: [N - num_prefix_tokens, d/2] (shared by heads) or [N - num_prefix_tokens, heads, d/2].
    """
    return _rotate(x, angles[:, None, :] if angles.ndim == 2 else angles, num_prefix_tokens)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _rotate(x: jax.Array, angles: jax.Array, num_prefix_tokens: int) -> jax.Array:
    """`rotate` with angles [N - num_prefix_tokens, heads or 1, d/2] and its gradient written
    out (autodiff's, to float32 rounding): the input's is the inverse rotation; the angles' the
    sum over the batch of g_odd * y_even - g_even * y_odd for the rotated output y, which the
    attention keeps anyway. Autodiff would also keep the unrotated q and k for it and sum the
    batch twice (for the cosine and the sine)."""
    return _rotate_fwd(x, angles, num_prefix_tokens)[0]


def _rotate_fwd(x, angles, num_prefix_tokens):
    cos, sin = cos_sin(angles)
    rotated = _turn(x, cos, sin, num_prefix_tokens)
    return rotated, (rotated, cos, sin)


def _rotate_bwd(num_prefix_tokens, residuals, grad):
    rotated, cos, sin = residuals
    grad_x = _turn(grad, cos, -sin, num_prefix_tokens)
    y_even, y_odd = _pairs(rotated[:, num_prefix_tokens:])
    g_even, g_odd = _pairs(grad[:, num_prefix_tokens:])
    grad_angles = sum_batch(g_odd * y_even - g_even * y_odd)  # [N - prefix, heads, d/2]
    return grad_x, grad_angles.sum(1, keepdims=True) if cos.shape[1] == 1 else grad_angles


_rotate.defvjp(_rotate_fwd, _rotate_bwd)


def _rotate_axial(module: nn.Module, position: Position, q: jax.Array, k: jax.Array):
    angles = jnp.asarray(axial_angles(position.coordinates(), q.shape[-1], position.rope_theta))
    p = position.num_prefix_tokens
    return rotate(q, angles, p), rotate(k, angles, p)


def _rotate_mixed(module: nn.Module, position: Position, q: jax.Array, k: jax.Array):
    frequencies = module.param(
        FREQUENCIES,
        mixed_frequencies_init(position.rope_theta),
        (2, q.shape[-2], q.shape[-1] // 2),
        module.param_dtype,
    )
    angles, p = mixed_angles(position.coordinates(), frequencies), position.num_prefix_tokens
    return rotate(q, angles, p), rotate(k, angles, p)


def check(model) -> None:
    """x and y each rotate half of the channel pairs: the head dimension must divide by 4."""
    head_dim = model.hidden_size // model.num_heads
    if head_dim % 4:
        raise ValueError(
            f"posemb={model.posemb!r} rotates x and y in halves of channel pairs, so the head "
            f"dimension hidden_size / num_heads must be divisible by 4; got "
            f"{model.hidden_size} / {model.num_heads} = {head_dim}. Change num_heads or "
            "hidden_size."
        )


AXIAL = Variant(
    "rope_axial",
    "fixed 2D rotary q/k (RoPE-Axial)",
    rotate=_rotate_axial,
    check=check,
    positions=True,
)
MIXED = Variant(
    "rope_mixed",
    "rotary q/k with learned 2D frequencies per layer and head (RoPE-Mixed)",
    rotate=_rotate_mixed,
    check=check,
    params=(grid_independent(FREQUENCIES, "rope_mixed"),),
    positions=True,
)
