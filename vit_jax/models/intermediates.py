"""Look inside a ViT: per-layer attention maps and tokens, in either block layout."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import paths


def _stack_layers(transformer: dict, name: str) -> jax.Array:
    """Collects a value sown under `name` over layers -> [L, ...] (scanned or per-block)."""
    if paths.SCANNED_BLOCK in transformer:
        return _find(transformer[paths.SCANNED_BLOCK], name)
    return jnp.stack([_find(transformer[k], name) for k in paths.block_names(transformer)])


def _find(tree: dict, name: str) -> jax.Array:
    """The value sown under `name` in a block's intermediates (sow keeps a tuple of values)."""
    for key, values in paths.flatten(tree).items():
        if paths.leaf(key) == name:
            return jax.tree.leaves(values)[0]
    raise KeyError(name)


def inspect(model: nn.Module, variables: dict, images: jax.Array) -> dict[str, jax.Array]:
    """Runs the model and returns what a notebook wants to look at.

    Returns a dict with `logits`, `attention_weights` and `attention_logits`
    [layers, B, heads, N, N] (softmax over the last axis), and `tokens` [layers, B, N, D], the
    output of each block. N counts the class token first if the model has one.
    """
    logits, state = model.apply(variables, images, mutable=["intermediates"])
    transformer = state["intermediates"][paths.TRANSFORMER]
    return {
        "logits": logits,
        "attention_weights": _stack_layers(transformer, "attention_weights"),
        "attention_logits": _stack_layers(transformer, "attention_logits"),
        "tokens": _stack_layers(transformer, "tokens"),
    }
