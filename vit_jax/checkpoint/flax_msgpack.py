"""Flax msgpack checkpoints: the files that the official ViT repository's fine-tuning writes.

google-research/vision_transformer saves `(params, opt_state, step)` with
`flax.training.checkpoints.save_checkpoint` as one msgpack file (`WORKDIR/checkpoint_<step>`);
older code saved a flax.optim optimizer (`target/...`) or a TrainState (`params/...`). The file
is decoded with `flax.serialization.msgpack_restore` (msgpack, never pickle) and its parameters
found and named as in an .npz (`npz.map_keys`: official or big_vision layout, pre-Linen or
Linen names, scanned or not). The optimizer state is ignored.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from flax import serialization

from vit_jax.checkpoint.errors import UnreadableCheckpointError
from vit_jax.checkpoint.npz import map_keys
from vit_jax.models import paths

# The first byte of a msgpack map (a Flax checkpoint is one): fixmap, map 16, map 32.
MSGPACK_MAP_STARTS = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])


def _why_unreadable(data: bytes, error: Exception) -> str:
    """Why a file that opens neither as .npz nor as msgpack does not: cut short (a zip's
    start, or a msgpack map that runs out of input), or another format altogether (a PNG's
    first byte is a msgpack map's too, but it does not run out: it decodes to junk)."""
    cut = "probably truncated (an interrupted download or save); download or save it again."
    if data.startswith(b"PK\x03\x04"):
        return f"it starts as a zip file but does not end as one: {cut}"
    if data[:1] and data[0] in MSGPACK_MAP_STARTS and "incomplete input" in str(error):
        return f"it starts as msgpack but ends too soon: {cut}"
    return (
        f"it is in another format (it begins {data[:8]!r}). Pass an .npz or Flax msgpack "
        "checkpoint, a workdir, its checkpoints folder or one of its step folders."
    )


def load_msgpack(path: str | os.PathLike) -> tuple[dict, dict]:
    """Parameters (nested numpy arrays, this package's names, as stored) and layout metadata
    of a Flax msgpack checkpoint (`format` "msgpack", no stored config)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path} does not exist.")
    with open(path, "rb") as f:
        data = f.read()
    try:
        tree = serialization.msgpack_restore(data)
    except Exception as e:  # msgpack raises many types (ValueError, ExtraData, TypeError, ...)
        raise UnreadableCheckpointError(
            f"{path} is neither an .npz (zip) file nor a readable Flax msgpack checkpoint: "
            f"{_why_unreadable(data, e)}"
        ) from e
    if not isinstance(tree, dict):
        raise UnreadableCheckpointError(
            f"{path} decodes to a {type(tree).__name__}, not a tree of parameters: it is not a "
            "Flax checkpoint."
        )
    arrays = {k: v for k, v in paths.flatten(tree).items() if isinstance(v, np.ndarray)}
    mapping, meta = map_keys(path, list(arrays))
    meta.update(format="msgpack", config=None)
    return paths.unflatten({ours: arrays[key] for key, ours in mapping.items()}), meta


def read_msgpack_shapes(path: str | os.PathLike) -> tuple[dict, dict]:
    """Parameter shapes (nested ShapeDtypeStructs) and metadata of a Flax msgpack checkpoint.
    msgpack has no index, so the file is decoded whole."""
    params, meta = load_msgpack(path)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params), meta
