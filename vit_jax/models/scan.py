"""Convert parameters between the per-block layout and the scanned (stacked) layout.

Per-block: `Transformer/encoderblock_{i}/...` for i < depth (official checkpoints).
Scanned:   `Transformer/encoderblock/...` with a leading layer axis (nn.scan; big_vision).
Both functions are pure and work on nested dicts of arrays (numpy or jax).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

_BLOCK = re.compile(r"^encoderblock_(\d+)$")


def num_blocks(transformer: dict) -> int:
    """Number of per-block entries `encoderblock_{i}` in a `Transformer` params dict."""
    return sum(1 for k in transformer if _BLOCK.match(k))


def is_scanned(params: dict) -> bool:
    """True if the `Transformer` subtree holds one stacked `encoderblock`."""
    return "encoderblock" in params.get("Transformer", {})


def scan_params(params: dict) -> dict:
    """Per-block -> scanned: stacks `encoderblock_{i}` into `encoderblock` [depth, ...]."""
    transformer = dict(params["Transformer"])
    depth = num_blocks(transformer)
    if depth == 0:
        return params
    blocks = [transformer.pop(f"encoderblock_{i}") for i in range(depth)]
    transformer["encoderblock"] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
    return {**params, "Transformer": transformer}


def unscan_params(params: dict) -> dict:
    """Scanned -> per-block: splits `encoderblock` [depth, ...] into `encoderblock_{i}`."""
    if not is_scanned(params):
        return params
    transformer = dict(params["Transformer"])
    stacked = transformer.pop("encoderblock")
    depth = jax.tree.leaves(stacked)[0].shape[0]
    for i in range(depth):
        transformer[f"encoderblock_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    return {**params, "Transformer": transformer}
