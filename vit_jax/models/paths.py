"""Parameter paths: the names of the model's parameter tree, and the one place that parses them.

Keys are '/'-joined paths, e.g. 'Transformer/encoderblock_3/MlpBlock_3/Dense_0/kernel'. The
names follow the official ViT checkpoints (pre-Linen block children). Blocks are stored either
one per layer, `Transformer/encoderblock_{i}/...`, or stacked by nn.scan under
`Transformer/encoderblock/...` with a leading layer axis.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from flax import traverse_util

SEP = "/"
TRANSFORMER = "Transformer"
SCANNED_BLOCK = "encoderblock"  # nn.scan's one stacked block
POSEMB_SCOPE = "posembed_input"  # additive position embeddings, inside TRANSFORMER
ENCODER_NORM = "encoder_norm"
EMBEDDING = "embedding"  # the patch embedding
CLS, HEAD, PRE_LOGITS, MAP_HEAD = "cls", "head", "pre_logits", "MAPHead_0"
# Children of an encoder block (pre-Linen names, as in the official checkpoints).
BLOCK_NORM_1, BLOCK_ATTENTION, BLOCK_NORM_2, BLOCK_MLP = (
    "LayerNorm_0",
    "MultiHeadDotProductAttention_1",
    "LayerNorm_2",
    "MlpBlock_3",
)
PATCH_KERNEL = f"{EMBEDDING}/kernel"

_BLOCK = re.compile(r"^encoderblock_(\d+)$")


def block_name(index: int) -> str:
    """The per-layer name of block `index`: 'encoderblock_3'."""
    return f"{SCANNED_BLOCK}_{index}"


def block_index(name: str) -> int | None:
    """3 for 'encoderblock_3'; None for any other name (the scanned block included)."""
    match = _BLOCK.match(name)
    return int(match.group(1)) if match else None


def key_block_index(key: str) -> int | None:
    """The block a '/'-joined key belongs to ('Transformer/encoderblock_3/...' -> 3), if any."""
    parts = key.split(SEP)
    return block_index(parts[1]) if len(parts) > 1 and parts[0] == TRANSFORMER else None


def block_pattern(key: str) -> str:
    """'Transformer/encoderblock_3/LayerNorm_0/scale' -> 'Transformer/encoderblock_*/...': the
    name under which listings show the same parameter of every block once."""
    return re.sub(r"encoderblock_\d+", "encoderblock_*", key)


def block_names(transformer: Mapping[str, Any]) -> list[str]:
    """The per-layer block names of a `Transformer` subtree, in layer order."""
    return sorted((k for k in transformer if block_index(k) is not None), key=block_index)


def require_params(params: Any, caller: str, *, whole: bool = True) -> None:
    """Raises ValueError unless `params` is a model's parameter tree: the usual mistake is
    passing Flax's variables {"params": ...} instead. `whole`: the tree must hold the patch
    embedding too (False: a part of the tree, e.g. the position parameters alone, will do)."""
    is_tree = isinstance(params, Mapping)
    variables = is_tree and "params" in params and TRANSFORMER not in params
    if not variables and (not whole or (is_tree and EMBEDDING in params)):
        return
    got = f"keys {sorted(params)}" if is_tree else type(params).__name__
    fix = (
        "pass variables['params'], not the variables"
        if variables
        else "pass the parameters of a model of this package"
    )
    raise ValueError(
        f"{caller} expects the model's parameter tree (with '{EMBEDDING}', '{TRANSFORMER}', "
        f"...), got {got}: {fix}."
    )


def is_scanned(params: Mapping[str, Any]) -> bool:
    """True if the `Transformer` subtree holds one stacked (scanned) block."""
    return SCANNED_BLOCK in params.get(TRANSFORMER, {})


def join(*parts: str) -> str:
    return SEP.join(parts)


def leaf(key: str) -> str:
    """The last name of a key: 'Transformer/posembed_input/pos_embedding' -> 'pos_embedding'."""
    return key.rsplit(SEP, 1)[-1]


def top(key: str) -> str:
    """The first name of a key: 'head/kernel' -> 'head'."""
    return key.split(SEP, 1)[0]


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dict -> {'/'-joined key: leaf}."""
    return traverse_util.flatten_dict(dict(tree), sep=SEP)


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'/'-joined key: leaf} -> nested dict."""
    return traverse_util.unflatten_dict(dict(flat), sep=SEP)


def shapes(tree: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """{'/'-joined key: shape} of a nested tree whose leaves have .shape."""
    return {k: tuple(v.shape) for k, v in flatten(tree).items()}
