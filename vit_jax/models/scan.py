"""Convert parameters between the per-block layout and the scanned (stacked) layout.

Per-block: `Transformer/encoderblock_{i}/...` for i < depth (official checkpoints).
Scanned:   `Transformer/encoderblock/...` with a leading layer axis (nn.scan; big_vision).
Both functions are pure and work on nested dicts of arrays (numpy or jax).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vit_jax.models import paths
from vit_jax.models.paths import SCANNED_BLOCK, TRANSFORMER, is_scanned


def scan_params(params: dict) -> dict:
    """Per-block -> scanned: stacks `encoderblock_{i}` into `encoderblock` [depth, ...]."""
    transformer = dict(params[TRANSFORMER])
    names = paths.block_names(transformer)
    if not names:
        return params
    blocks = [transformer.pop(name) for name in names]
    transformer[SCANNED_BLOCK] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
    return {**params, TRANSFORMER: transformer}


def unscan_params(params: dict) -> dict:
    """Scanned -> per-block: splits `encoderblock` [depth, ...] into `encoderblock_{i}`."""
    if not is_scanned(params):
        return params
    transformer = dict(params[TRANSFORMER])
    stacked = transformer.pop(SCANNED_BLOCK)
    depth = jax.tree.leaves(stacked)[0].shape[0]
    for i in range(depth):
        transformer[paths.block_name(i)] = jax.tree.map(lambda x, i=i: x[i], stacked)
    return {**params, TRANSFORMER: transformer}
