"""Multi-head dot-product attention with the hooks that position-embedding variants need.

Parameters follow Flax's MultiHeadDotProductAttention (and so the official checkpoints):
`query`, `key`, `value` kernels [D, heads, head_dim] with biases [heads, head_dim], and `out`
[heads, head_dim, D]. Hooks: a relative position bias added to the logits (`relative`) and
rotary embeddings applied to q and k (`rope_axial`, `rope_mixed`).

When the caller makes the `intermediates` collection mutable, the module sows its pre-softmax
`attention_logits` and post-softmax `attention_weights`, both [B, heads, N_q, N_k].
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import relpos, rope


class Attention(nn.Module):
    """Self-attention (or attention from `inputs_q` to `inputs_kv`): [B, N, D] -> [B, N_q, D].

    Attributes:
      num_heads: number of heads; D must be divisible by it.
      position: None, "relative", "rope_axial" or "rope_mixed".
      grid: patch grid (h, w) of the keys/queries, for position variants.
      num_prefix: leading non-patch tokens (class token) in the sequence.
      rope_theta: base θ of the rotary frequencies.
    """

    num_heads: int
    position: str | None = None
    grid: tuple[int, int] = (1, 1)
    num_prefix: int = 0
    rope_theta: float = 100.0
    dropout_rate: float = 0.0
    deterministic: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array | None = None) -> jax.Array:
        inputs_kv = inputs_q if inputs_kv is None else inputs_kv
        dim = inputs_q.shape[-1]
        head_dim = dim // self.num_heads
        dense = functools.partial(
            nn.DenseGeneral,
            features=(self.num_heads, head_dim),
            kernel_init=nn.initializers.xavier_uniform(),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        q = dense(name="query")(inputs_q)
        k = dense(name="key")(inputs_kv)
        v = dense(name="value")(inputs_kv)

        if self.position in rope.ROPE_POSEMBS:
            angles = self._rope_angles(head_dim)
            q = rope.rotate(q, angles, self.num_prefix)
            k = rope.rotate(k, angles, self.num_prefix)

        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head_dim).astype(q.dtype)
        logits = logits.astype(jnp.float32)
        if self.position == "relative":
            logits = logits + self._relative_bias()[None]
        self.sow("intermediates", "attention_logits", logits)
        weights = jax.nn.softmax(logits, axis=-1)
        self.sow("intermediates", "attention_weights", weights)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=self.deterministic)

        out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), v)
        return nn.DenseGeneral(
            features=dim,
            axis=(-2, -1),
            kernel_init=nn.initializers.xavier_uniform(),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="out",
        )(out)

    def _rope_angles(self, head_dim: int) -> jax.Array:
        """Rotation angles of the patch tokens: [N, d/2] (axial) or [N, heads, d/2] (mixed)."""
        if self.position == "rope_axial":
            return jnp.asarray(rope.axial_angles(self.grid, head_dim, self.rope_theta))
        frequencies = self.param(
            "rope_frequencies",
            rope.mixed_frequencies_init(self.rope_theta),
            (2, self.num_heads, head_dim // 2),
            self.param_dtype,
        )
        return rope.mixed_angles(self.grid, frequencies)

    def _relative_bias(self) -> jax.Array:
        """Bias [heads, N, N] gathered from the learned table."""
        table = self.param(
            "relative_position_bias_table",
            nn.initializers.truncated_normal(stddev=0.02),
            (relpos.num_relative_positions(self.grid, self.num_prefix), self.num_heads),
            self.param_dtype,
        )
        index = relpos.relative_position_index(self.grid, self.num_prefix)
        return jnp.transpose(table[index].astype(jnp.float32), (2, 0, 1))
