"""The train state: a plain dict pytree, so that it saves, restores and shards like any other.

    {"step": int32 [], "params": model params, "opt_state": optax state, "rng": base PRNG key}

The rng is the run's base key; step `s` uses `jax.random.fold_in(rng, s)`, so a resumed run draws
exactly the randomness the uninterrupted run would have drawn.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


def init_params(model: nn.Module, rng: jax.Array, channels: int) -> dict:
    """Fresh parameters of `model` for images with `channels` channels."""
    dummy = jnp.zeros((1, *model.image_size, channels), jnp.float32)
    return model.init(rng, dummy)["params"]


def create_state(params: dict, tx: optax.GradientTransformation, rng: jax.Array) -> dict:
    """A train state at step 0 around `params`."""
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": tx.init(params),
        "rng": rng,
    }
