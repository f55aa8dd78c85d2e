"""Mixed precision: which dtype each kind of computation runs in.

With `dtype="bfloat16"` (or float16) the model runs mixed precision, the way accelerators and
modern CPUs are fastest and training stays stable:

- every matrix product (patch embedding, q/k/v and output projections, attention logits and
  weighted values, MLP, head) takes `dtype` inputs and accumulates and returns float32
  (`preferred_element_type`): a bf16 x bf16 -> f32 product runs at the bf16 rate on TPUs,
  GPUs (tensor cores) and CPUs with AVX512-BF16 / AMX, while a bf16 -> bf16 product on XLA:CPU
  is slower than float32;
- parameters stay `param_dtype` (float32 by default) and are cast to `dtype` where they enter a
  product;
- LayerNorm statistics, softmax, the residual stream and the loss stay float32.

With `dtype="float32"` every function here is plain float32 arithmetic.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

LOW_PRECISION = (jnp.bfloat16, jnp.float16)


def dtype_name(value, field: str = "dtype") -> str:
    """The name of a floating dtype given as a name, a NumPy/JAX dtype or a scalar type
    ('bfloat16', jnp.bfloat16, np.dtype('float32'), float -> 'float64'); ValueError for
    anything else, e.g. 'int32' (a model computes and stores its parameters in floats)."""
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"{field}={value!r} is not a floating-point dtype; use 'float32', 'bfloat16' or "
            "'float16' (or jnp.bfloat16, ...)."
        )
    return dtype.name


def is_low(dtype) -> bool:
    """True for the 16-bit compute dtypes that accumulate in float32."""
    return jnp.dtype(dtype) in {jnp.dtype(t) for t in LOW_PRECISION}


def accumulation(dtype):
    """The dtype products of `dtype` inputs accumulate in and return: float32 for 16-bit inputs,
    else None (the inputs' own dtype)."""
    return jnp.float32 if is_low(dtype) else None


def dot_general(dtype):
    """`lax.dot_general` for Flax's `nn.Dense(dot_general=...)` / `nn.DenseGeneral`: `dtype`
    inputs, float32 accumulation and output for 16-bit `dtype`."""
    return functools.partial(jax.lax.dot_general, preferred_element_type=accumulation(dtype))


def einsum(spec: str, *operands: jax.Array, dtype) -> jax.Array:
    """`jnp.einsum` of the operands cast to `dtype`, accumulated as `dot_general(dtype)` does."""
    operands = [x.astype(dtype) for x in operands]
    return jnp.einsum(spec, *operands, preferred_element_type=accumulation(dtype))


__all__ = ["LOW_PRECISION", "accumulation", "dot_general", "dtype_name", "einsum", "is_low"]
