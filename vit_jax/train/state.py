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

KEY_SHAPE = jax.ShapeDtypeStruct((2,), jnp.uint32)  # a PRNGKey, for abstract evaluation


def init_params(model: nn.Module, rng: jax.Array, channels: int) -> dict:
    """Fresh parameters of `model` for images with `channels` channels."""
    dummy = jnp.zeros((1, *model.image_size, channels), jnp.float32)
    return model.init(rng, dummy)["params"]


def check_params(model: nn.Module, params: dict, channels: int) -> None:
    """Raises ValueError unless `params` has exactly the parameters (names and shapes) that
    `model` makes for `channels`-channel images: Flax would ignore an extra one (e.g. the table
    of another position embedding) and compute something else without a word."""
    from vit_jax.models import paths

    paths.require_params(params, "the model")
    expected = paths.shapes(jax.eval_shape(lambda r: init_params(model, r, channels), KEY_SHAPE))
    given = paths.shapes(params)
    if given == expected:
        return
    extra = sorted(set(given) - set(expected))
    missing = sorted(set(expected) - set(given))
    other = sorted(k for k in set(given) & set(expected) if given[k] != expected[k])
    why = (
        f"{extra[0]!r} {given[extra[0]]} is not a parameter of this model"
        if extra
        else f"{missing[0]!r} {expected[missing[0]]} is missing"
        if missing
        else f"{other[0]!r} is {given[other[0]]}, the model's is {expected[other[0]]}"
    )
    raise ValueError(
        f"the parameters do not fit the model: {why}. Use the model they were trained with, "
        "or adapt them with vit_jax.checkpoint.adapt_params(params, model, rng)."
    )


def create_state(params: dict, tx: optax.GradientTransformation, rng: jax.Array) -> dict:
    """A train state at step 0 around `params`."""
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": tx.init(params),
        "rng": rng,
    }
