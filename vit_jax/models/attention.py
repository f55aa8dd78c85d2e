"""Multi-head dot-product attention with the hooks that attention-level position embeddings use.

Parameters follow Flax's MultiHeadDotProductAttention (and so the official checkpoints):
`query`, `key`, `value` kernels [D, heads, head_dim] with biases [heads, head_dim], and `out`
[heads, head_dim, D]. An attention variant (`posemb/`: `relative`, `rope_axial`, `rope_mixed`)
may rotate q and k (`Variant.rotate`) and add a bias to the logits (`Variant.bias`); its
parameters live in this module's scope.

How it is computed is the `impl` field (the model's `attention_impl`); every implementation
reads the same parameters and gives the same outputs (to float32 rounding; tested):

- `reference`: three separate projections and two einsums, the textbook formula. It is the one
  that sows (see below), so a model applied with `intermediates` mutable always takes it.
- `fused`: q, k and v from ONE matrix product with the three kernels concatenated ([D, 3D],
  built from the stored kernels on the fly: the checkpoint layout does not change), the
  attention products in [B, heads, N, head_dim] layout (batch dimensions leading, no transposes
  inside the products) with q scaled before its product, and the output projection as one
  [B*N, D] x [D, D] product, and a softmax whose derivative is written from its output
  (`softmax`). The fastest on CPU and TPU.
- `xla` / `cudnn`: the fused projection and `jax.nn.dot_product_attention` with that
  implementation (`cudnn`: NVIDIA GPUs, flash attention, 16-bit dtypes).
- `auto` (default): `fused`, on every backend. (jax.nn.dot_product_attention left to choose runs
  its XLA implementation, the reference's formula with a softmax that keeps more for the
  backward pass; cuDNN is not chosen for you until it has been measured on a GPU: ask for
  `cudnn`.)

When the caller makes the `intermediates` collection mutable, the module sows its pre-softmax
`attention_logits` and post-softmax `attention_weights`, both [B, heads, N_q, N_k].
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import precision
from vit_jax.models.posemb import VARIANTS, Position
from vit_jax.models.posemb.base import broadcast_batch

ATTENTION_IMPLS = ("auto", "reference", "fused", "xla", "cudnn")
LIBRARY_IMPLS = ("xla", "cudnn")  # jax.nn.dot_product_attention's; they have no dropout


def resolve_impl(impl: str) -> str:
    """The implementation `impl` runs as: `auto` is `fused`."""
    return "fused" if impl == "auto" else impl


@jax.custom_jvp
def softmax(logits: jax.Array) -> jax.Array:
    """`jax.nn.softmax` over the last axis (the same formula, the same values), differentiated
    as y * (dx - sum(y * dx)) from its output y alone. jax.nn.softmax keeps that rule behind
    the off-by-default `jax_softmax_custom_jvp`; autodiff through its exp and division keeps
    exp(x - max) and a broadcast 1/sum for the backward pass as well: ViT-S/16 at batch 32
    holds 16% more memory and steps slower (see README "Results")."""
    unnormalized = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    return unnormalized / jnp.sum(unnormalized, axis=-1, keepdims=True)


@softmax.defjvp
def _softmax_jvp(primals, tangents):
    (logits,), (dlogits,) = primals, tangents
    y = softmax(logits)
    return y, y * (dlogits - jnp.sum(y * dlogits, axis=-1, keepdims=True))


class Projection(nn.Module):
    """The kernel [*in_shape, *out_shape] and bias [*out_shape] of one projection, declared with
    the names, initialisers and random numbers of `nn.DenseGeneral` (xavier-uniform over the
    flattened [prod(in), prod(out)] kernel, zero bias). Returns (kernel, bias)."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array]:
        flat = (math.prod(self.in_shape), math.prod(self.out_shape))

        def kernel_init(rng, shape, dtype=jnp.float32):
            return nn.initializers.xavier_uniform()(rng, flat, dtype).reshape(shape)

        shape = (*self.in_shape, *self.out_shape)
        kernel = self.param("kernel", kernel_init, shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, self.out_shape, self.param_dtype)
        return kernel, bias


def fused_projection(x: jax.Array, projections, dtype) -> list[jax.Array]:
    """x [B, N, D] through several [D, heads, head_dim] projections at once: one [B*N, D] x
    [D, k * heads * head_dim] product. Returns k arrays [B, N, heads, head_dim]."""
    b, n, d = x.shape
    heads = [kernel.shape[1:] for kernel, _ in projections]
    kernel = jnp.concatenate([k.reshape(d, -1) for k, _ in projections], axis=1)
    bias = jnp.concatenate([bias.reshape(-1) for _, bias in projections])
    y = precision.einsum("md,df->mf", x.reshape(b * n, d), kernel, dtype=dtype) + bias
    sizes = [math.prod(h) for h in heads]
    splits = [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]
    return [
        part.reshape(b, n, *h) for part, h in zip(jnp.split(y, splits, axis=1), heads, strict=True)
    ]


class Attention(nn.Module):
    """Self-attention (or attention from `inputs_q` to `inputs_kv`): [B, N, D] -> [B, N_q, D].

    Attributes:
      num_heads: number of heads; D must be divisible by it.
      posemb: the attention-level position embedding (a name in posemb.ATTENTION_POSEMBS), or
        None; `position` says where the patch tokens sit for it.
      impl: how it is computed (ATTENTION_IMPLS, see the module docstring).
    """

    num_heads: int
    posemb: str | None = None
    position: Position | None = None
    dropout_rate: float = 0.0
    deterministic: bool = True
    impl: str = "auto"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array | None = None) -> jax.Array:
        self_attention = inputs_kv is None
        inputs_kv = inputs_q if inputs_kv is None else inputs_kv
        dim = inputs_q.shape[-1]
        heads = (self.num_heads, dim // self.num_heads)
        project = lambda name, shape_in, shape_out: Projection(
            shape_in, shape_out, self.param_dtype, name=name
        )()
        query, key, value = (project(n, (dim,), heads) for n in ("query", "key", "value"))
        out = project("out", heads, (dim,))

        impl = resolve_impl(self.impl)
        if self.is_mutable_collection("intermediates"):
            impl = "reference"  # the only one that sows the attention maps
        if impl == "reference":
            q, k, v = (
                precision.einsum("bnd,dhk->bnhk", x, kernel, dtype=self.dtype) + bias
                for x, (kernel, bias) in zip(
                    (inputs_q, inputs_kv, inputs_kv), (query, key, value), strict=True
                )
            )
        elif self_attention:
            q, k, v = fused_projection(inputs_q, (query, key, value), self.dtype)
        else:
            (q,) = fused_projection(inputs_q, (query,), self.dtype)
            k, v = fused_projection(inputs_kv, (key, value), self.dtype)

        variant = VARIANTS[self.posemb] if self.posemb else None
        if variant is not None and variant.rotate is not None:
            q, k = variant.rotate(self, self.position, q, k)
        bias = None
        if variant is not None and variant.bias is not None:
            bias = variant.bias(self, self.position, self.num_heads)[None]  # [1, heads, N, N]

        if impl == "reference":
            y = self._reference(q, k, v, bias)
            return precision.einsum("bnhk,hkd->bnd", y, out[0], dtype=self.dtype) + out[1]
        if impl == "fused":
            y = self._fused(q, k, v, bias)  # [B, N, heads, head_dim]
        else:
            y = self._library(q, k, v, bias, impl)
        b, n = y.shape[:2]
        y = precision.einsum(
            "md,de->me", y.reshape(b * n, dim), out[0].reshape(dim, dim), dtype=self.dtype
        )
        return y.reshape(b, n, dim) + out[1]

    def _reference(self, q, k, v, bias):
        """softmax(q kᵀ / √d + bias) v, sowing the logits and weights; [B, N, heads, d]."""
        logits = precision.einsum("bqhd,bkhd->bhqk", q, k, dtype=self.dtype)
        logits = logits.astype(jnp.float32) / jnp.sqrt(q.shape[-1]).astype(jnp.float32)
        if bias is not None:
            logits = logits + broadcast_batch(bias, logits.shape[0])
        self.sow("intermediates", "attention_logits", logits)
        weights = jax.nn.softmax(logits, axis=-1)
        self.sow("intermediates", "attention_weights", weights)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=self.deterministic)
        return precision.einsum("bhqk,bkhd->bqhd", weights, v, dtype=self.dtype)

    def _fused(self, q, k, v, bias):
        """The reference's formula in [B, heads, N, d] layout, q scaled before its product."""
        q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
        q = q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
        logits = precision.einsum("bhqd,bhkd->bhqk", q, k, dtype=self.dtype)
        logits = logits.astype(jnp.float32)
        if bias is not None:
            logits = logits + broadcast_batch(bias, logits.shape[0])
        weights = softmax(logits)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=self.deterministic)
        y = precision.einsum("bhqk,bhkd->bhqd", weights, v, dtype=self.dtype)
        return y.transpose(0, 2, 1, 3)

    def _library(self, q, k, v, bias, impl: str):
        """jax.nn.dot_product_attention with the implementation `impl`, "xla" or "cudnn"."""
        q, k, v = (x.astype(self.dtype) for x in (q, k, v))
        if bias is not None:
            bias = bias.astype(self.dtype)
        return jax.nn.dot_product_attention(q, k, v, bias=bias, implementation=impl)


__all__ = [
    "ATTENTION_IMPLS",
    "Attention",
    "Projection",
    "fused_projection",
    "resolve_impl",
    "softmax",
]
