"""Look inside a ViT: per-layer attention maps and tokens, in either block layout."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def _stack_layers(transformer: dict, name: str) -> jax.Array:
    """Collects a sown value over layers -> [L, ...] (scanned or per-block layout)."""
    if "encoderblock" in transformer:
        found = jax.tree.leaves(_find(transformer["encoderblock"], name))
        return found[0]
    blocks = sorted(
        (k for k in transformer if k.startswith("encoderblock_")),
        key=lambda k: int(k.rsplit("_", 1)[1]),
    )
    return jnp.stack([jax.tree.leaves(_find(transformer[k], name))[0] for k in blocks])


def _find(tree: dict, name: str):
    if name in tree:
        return tree[name]
    for value in tree.values():
        if isinstance(value, dict):
            found = _find(value, name)
            if found is not None:
                return found
    return None


def inspect(model: nn.Module, variables: dict, images: jax.Array) -> dict[str, jax.Array]:
    """Runs the model and returns what a notebook wants to look at.

    Returns a dict with `logits`, `attention_weights` and `attention_logits`
    [layers, B, heads, N, N] (softmax over the last axis), and `tokens` [layers, B, N, D], the
    output of each block. N counts the class token first if the model has one.
    """
    logits, state = model.apply(variables, images, mutable=["intermediates"])
    transformer = state["intermediates"]["Transformer"]
    return {
        "logits": logits,
        "attention_weights": _stack_layers(transformer, "attention_weights"),
        "attention_logits": _stack_layers(transformer, "attention_logits"),
        "tokens": _stack_layers(transformer, "tokens"),
    }
