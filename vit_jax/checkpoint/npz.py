"""`.npz` checkpoints: the official ViT and big_vision layouts in, the official layout out.

In (`read_npz_shapes`, `load_npz`), keys are mapped onto this package's parameter tree:

- official (google-research/vision_transformer): flat '/'-joined keys (`embedding/kernel`,
  `Transformer/encoderblock_0/...`, `head/bias`: the model's own names), block names either
  pre-Linen (`MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`, which the model
  uses natively) or Linen (`MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`);
- big_vision: the same under a `params/` prefix (`params/img/` for SigLIP image towers), with
  `pos_embedding` at the top level and no class-token row, blocks per layer or scanned
  (`Transformer/encoderblock/...` with a leading layer axis). Other keys (optimizer state, text
  towers) are ignored.

Out (`export_npz`): flat '/'-joined keys, per-block, pre-Linen names (what timm's
`load_pretrained` and the official code read), in the parameters' dtype (bfloat16, which other
readers do not know, widened to float32), plus one string entry `vit_jax_config`
holding the model config as JSON when given (other readers ignore it).

Nothing is ever unpickled: files are opened with allow_pickle=False, and a file holding Python
objects is refused before any array is read.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import zipfile
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.checkpoint.errors import UnreadableCheckpointError
from vit_jax.models import paths
from vit_jax.models.posemb import learned
from vit_jax.models.scan import unscan_params
from vit_jax.models.vit import model_fields

# Where the parameters are in a file's tree: at the top; under `params/` (big_vision, Flax's
# TrainState; `params/img/` for SigLIP); under the optimizer's `target/` (flax.optim); under `0/`
# (the official repository's fine-tuning saves the tuple (params, opt_state, step)).
PREFIXES = ("", "params/", "params/img/", "opt/target/", "target/", "0/")
# What reading a damaged or foreign archive raises (zipfile: also NotImplementedError for an
# unknown version and RuntimeError for an encrypted member; struct.error for torn headers).
READ_ERRORS = (
    zipfile.BadZipFile,
    EOFError,
    OSError,
    ValueError,
    zlib.error,
    NotImplementedError,
    RuntimeError,
    struct.error,
)
CONFIG_KEY = "vit_jax_config"
_ANCHOR = paths.PATCH_KERNEL
_POSEMB_KEY = paths.join(paths.TRANSFORMER, paths.POSEMB_SCOPE, learned.PARAM)
# big_vision keeps the learned position embedding outside the encoder.
_RELOCATED = {
    learned.PARAM: _POSEMB_KEY,
    paths.join(paths.TRANSFORMER, learned.PARAM): _POSEMB_KEY,
}
# Linen's automatic names inside an encoder block -> the pre-Linen names the model uses.
# LayerNorm_0 means the same in both; the other Linen names never occur in pre-Linen files.
_LINEN_TO_PRE_LINEN = {
    "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
    "LayerNorm_1": "LayerNorm_2",
    "MlpBlock_0": "MlpBlock_3",
}


def _open_error(path: str, error: Exception) -> UnreadableCheckpointError:
    return UnreadableCheckpointError(
        f"{path} is not a readable .npz file ({type(error).__name__}: {error}); it is probably "
        "truncated (an interrupted download or save) or in another format. Download or export "
        "it again."
    )


def _headers(path: str) -> dict[str, jax.ShapeDtypeStruct]:
    """Shape and dtype of every array in the archive, read from the .npy headers only."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path} does not exist.")
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                with archive.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(f)
                headers[info.filename.removesuffix(".npy")] = (shape, dtype)
    except READ_ERRORS as e:
        raise _open_error(path, e) from e
    for name, (_, dtype) in headers.items():
        if dtype.hasobject:
            raise UnreadableCheckpointError(
                f"{path} holds Python objects (entry {name!r} has dtype object); loading it would "
                "need unpickling, which is unsafe and refused. Save the parameters as plain "
                "numeric arrays (np.savez of a flat dict of arrays)."
            )
    return {name: jax.ShapeDtypeStruct(*header) for name, header in headers.items()}


def map_keys(path: str, keys: list[str]) -> tuple[dict[str, str], dict]:
    """Maps the '/'-joined keys of a stored tree (an .npz archive's, or a flattened Flax msgpack
    tree's) to this package's keys; returns the mapping {stored key: our key} and the layout
    metadata. Raises UnreadableCheckpointError if no prefix holds the parameters."""
    prefix = next((p for p in PREFIXES if p + _ANCHOR in keys), None)
    if prefix is None:
        shown = ", ".join(sorted(keys)[:8]) + (", ..." if len(keys) > 8 else "")
        raise UnreadableCheckpointError(
            f"{path} has an unknown layout: no {_ANCHOR!r} entry under any of the prefixes "
            f"{PREFIXES}, so it is not an official ViT or big_vision checkpoint (its entries: "
            f"{shown}). Convert it to the official ViT layout (flat keys such as "
            f"{_ANCHOR!r}) first."
        )
    mapping, linen = {}, False
    for key in keys:
        if not key.startswith(prefix) or key == CONFIG_KEY:
            continue
        ours = _RELOCATED.get(key[len(prefix) :], key[len(prefix) :])
        parts = ours.split(paths.SEP)
        if len(parts) > 2 and _is_block(parts):
            linen = linen or parts[2] in _LINEN_TO_PRE_LINEN
            parts[2] = _LINEN_TO_PRE_LINEN.get(parts[2], parts[2])
        mapping[key] = paths.join(*parts)
    relocated = any(prefix + k in keys for k in _RELOCATED)
    scanned = any(_is_block(k.split(paths.SEP)[:2], scanned=True) for k in mapping.values())
    meta = {
        "path": path,
        "format": "npz",
        "layout": "big_vision" if prefix.startswith("params/") or relocated else "official",
        "prefix": prefix,
        "naming": "linen" if linen else "pre-linen",
        "scanned": scanned,
        "step": None,
        # Class-token rows of grid parameters that the layout fixes: big_vision's top-level
        # pos_embedding never has one.
        "num_prefix_tokens": {learned.PARAM: 0} if relocated else {},
    }
    return mapping, meta


def _is_block(parts: list[str], scanned: bool = False) -> bool:
    """Whether a key's first names are an encoder block's (only the stacked one if `scanned`)."""
    if len(parts) < 2 or parts[0] != paths.TRANSFORMER:
        return False
    return parts[1] == paths.SCANNED_BLOCK or (
        not scanned and paths.block_index(parts[1]) is not None
    )


def read_npz_shapes(path: str | os.PathLike) -> tuple[dict, dict]:
    """Parameter shapes (nested ShapeDtypeStructs, this package's names) and layout metadata of
    an .npz checkpoint, without reading the arrays. Raises FileNotFoundError or
    UnreadableCheckpointError (truncated, pickled objects, unknown layout)."""
    path = os.fspath(path)
    headers = _headers(path)
    mapping, meta = map_keys(path, list(headers))
    meta["config"] = _read_config(path) if CONFIG_KEY in headers else None
    return paths.unflatten({ours: headers[key] for key, ours in mapping.items()}), meta


def load_npz(path: str | os.PathLike) -> tuple[dict, dict]:
    """Parameters (nested numpy arrays, this package's names, scanned if stored scanned) and
    layout metadata of an official or big_vision .npz checkpoint."""
    path = os.fspath(path)
    _, meta = read_npz_shapes(path)  # validates the file and the layout before reading arrays
    try:
        with np.load(path, allow_pickle=False) as archive:
            mapping, _ = map_keys(path, list(archive.files))
            flat = {ours: archive[key] for key, ours in mapping.items()}
    except READ_ERRORS as e:
        raise _open_error(path, e) from e
    return paths.unflatten(flat), meta


def _read_config(path: str) -> dict | None:
    with np.load(path, allow_pickle=False) as archive:
        return json.loads(str(archive[CONFIG_KEY][()]))


def export_npz(
    path: str | os.PathLike, params: dict, *, model=None, config: dict | None = None
) -> None:
    """Writes `params` (this package's tree, per-block or scanned) as an official-layout .npz.

    Keys are '/'-joined and per-block with pre-Linen names, values numpy arrays (bfloat16 is
    widened losslessly to float32). `model` (the VisionTransformer of `params`) is stored as
    the config's "model" (`models.model_fields`), so that a reader need not infer it from the
    shapes (where a parameter-free position embedding, e.g. rope_axial, leaves no trace);
    `config` (e.g. a run's, {"model": {...}, ...}) is stored as it is. Both go, as JSON, under
    `vit_jax_config`. The file is written to a temporary name and renamed, so a reader never
    sees half a file.
    """
    path = os.fspath(path)
    paths.require_params(params, "export_npz")
    if model is not None:
        config = {**(config or {}), "model": model_fields(model)}
    flat = paths.flatten(unscan_params(params))
    arrays = {k: _as_float32(v) for k, v in flat.items()}
    if config is not None:
        arrays[CONFIG_KEY] = np.asarray(json.dumps(config))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt: no half-written file is left
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _as_float32(x) -> np.ndarray:
    """numpy array of a leaf; bfloat16 (not an .npy dtype other readers know) becomes float32."""
    x = np.asarray(x)
    return x.astype(np.float32) if x.dtype == jnp.bfloat16 else x
