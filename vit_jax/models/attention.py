"""Multi-head dot-product attention with the hooks that attention-level position embeddings use.

Parameters follow Flax's MultiHeadDotProductAttention (and so the official checkpoints):
`query`, `key`, `value` kernels [D, heads, head_dim] with biases [heads, head_dim], and `out`
[heads, head_dim, D]. An attention variant (`posemb/`: `relative`, `rope_axial`, `rope_mixed`)
may rotate q and k (`Variant.rotate`) and add a bias to the logits (`Variant.bias`); its
parameters live in this module's scope.

When the caller makes the `intermediates` collection mutable, the module sows its pre-softmax
`attention_logits` and post-softmax `attention_weights`, both [B, heads, N_q, N_k].
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models.posemb import VARIANTS, Position


class Attention(nn.Module):
    """Self-attention (or attention from `inputs_q` to `inputs_kv`): [B, N, D] -> [B, N_q, D].

    Attributes:
      num_heads: number of heads; D must be divisible by it.
      posemb: the attention-level position embedding (a name in posemb.ATTENTION_POSEMBS), or
        None; `position` says where the patch tokens sit for it.
    """

    num_heads: int
    posemb: str | None = None
    position: Position | None = None
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

        variant = VARIANTS[self.posemb] if self.posemb else None
        if variant is not None and variant.rotate is not None:
            q, k = variant.rotate(self, self.position, q, k)

        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head_dim).astype(q.dtype)
        logits = logits.astype(jnp.float32)
        if variant is not None and variant.bias is not None:
            logits = logits + variant.bias(self, self.position, self.num_heads)[None]
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
