"""Load a checkpoint of any supported kind, and restore it into a model (`init_from`).

A checkpoint is named by a path: an Orbax checkpoints directory (its newest step; a training
workdir works too), one step directory of it, an `.npz` file in the official ViT or big_vision
layout, or a Flax msgpack file (the official repository's fine-tuned checkpoints); or by an
http(s):// or gs:// URL or a published name (`augreg:B/16-i21k`), downloaded into the cache once
(download.py, published.py).
"""

from __future__ import annotations

import os

import jax
import numpy as np

from vit_jax.checkpoint import adapt, architecture, download, published
from vit_jax.checkpoint.errors import UnreadableCheckpointError
from vit_jax.checkpoint.flax_msgpack import load_msgpack, read_msgpack_shapes
from vit_jax.checkpoint.npz import load_npz, read_npz_shapes
from vit_jax.checkpoint.orbax_params import load_orbax_params, read_orbax_shapes
from vit_jax.checkpoint.report import Report
from vit_jax.models import VisionTransformer, paths
from vit_jax.models.resize import DEFAULT_ANTIALIAS, DEFAULT_METHOD

# Each format's readers: (shapes and metadata only, parameters and metadata).
_READERS = {
    "orbax": (read_orbax_shapes, load_orbax_params),
    "npz": (read_npz_shapes, load_npz),
    "msgpack": (read_msgpack_shapes, load_msgpack),
}


def locate(source: str | os.PathLike) -> str:
    """The local path of a checkpoint: a path as is; a published name or an http(s):// or
    gs:// URL is downloaded into the cache once (raises DownloadError if it cannot be)."""
    url = published.resolve(source)
    return download.fetch(url) if download.is_url(url) else url


def _format(path: str) -> str:
    """The format of a local checkpoint: a directory is "orbax"; a file is "npz" (by its name,
    else a zip's signature) or else "msgpack"."""
    if os.path.isdir(path):
        return "orbax"
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"checkpoint {path} does not exist. Pass an Orbax checkpoints directory "
            "(WORKDIR/checkpoints), one of its step directories, an .npz or Flax msgpack file, "
            "an http(s):// or gs:// URL, or a published name such as augreg:B/16-i21k."
        )
    if path.endswith(".npz"):
        return "npz"
    with open(path, "rb") as f:
        return "npz" if f.read(4) == b"PK\x03\x04" else "msgpack"


def checkpoint_shapes(path: str | os.PathLike) -> tuple[dict, dict]:
    """(shapes, meta) of a checkpoint without reading its arrays (a msgpack file is decoded
    whole): nested ShapeDtypeStructs in this package's parameter names (per-block or scanned,
    as stored), and a metadata dict with `path` (local), `format` ("npz" | "msgpack" |
    "orbax"), `layout` ("official" | "big_vision" | "vit_jax"), `naming`, `scanned`, `step`,
    `num_prefix_tokens` (class-token rows of grid parameters that the layout fixes, by leaf
    name) and `config` (the stored config or None). `path`: see `locate`.
    """
    path = locate(path)
    return _READERS[_format(path)][0](path)


def trained_grid(path: str | os.PathLike) -> tuple[int, int] | None:
    """The reference grid of the position embedding of the checkpoint at `path`: the patch grid
    (h, w) it was first trained on, i.e. its stored config's model.posemb_grid, else its own
    grid (a checkpoint without position parameters gives its grid too: harmless). From shapes
    and metadata only, no array read; None if neither the config nor the shapes tell it."""
    return _reference_grid(path, likely_grid=None)


def _reference_grid(path, likely_grid: tuple[int, int] | None) -> tuple[int, int] | None:
    """`trained_grid`, the stored grid guessed as `adapt.plan` does for a model on
    `likely_grid` when the shapes allow several."""
    shapes, meta = checkpoint_shapes(path)
    arch = architecture.infer(adapt.per_block_shapes(shapes), meta, likely_grid=likely_grid)
    return None if arch.posemb_grid is None else tuple(arch.posemb_grid)


def with_trained_grid(model: VisionTransformer, path: str | os.PathLike) -> VisionTransformer:
    """`model` with posemb_grid set to the checkpoint's reference grid (`trained_grid`), so that
    its position embeddings interpolate or extrapolate from the grid they were trained on, when
    model.posemb_grid is unset and that grid is not model.grid; else `model` unchanged."""
    if model.posemb_grid is not None:
        return model
    return with_reference_grid(model, _reference_grid(path, likely_grid=model.grid))


def with_reference_grid(
    model: VisionTransformer, grid: tuple[int, int] | None
) -> VisionTransformer:
    """`model` with posemb_grid = `grid`, when posemb_grid is unset and `grid` is known and
    not the model's own; else `model` unchanged."""
    if model.posemb_grid is not None or grid is None or tuple(grid) == model.grid:
        return model
    return model.clone(posemb_grid=tuple(grid))


def load_params(path: str | os.PathLike) -> tuple[dict, dict]:
    """(params, meta): the stored parameters as nested host numpy arrays in this package's names
    (per-block or scanned, as stored) and the metadata of `checkpoint_shapes`."""
    path = locate(path)
    return _READERS[_format(path)][1](path)


def check_finite(params: dict, source: str) -> None:
    """Raises UnreadableCheckpointError naming the first parameter with a NaN or infinity."""
    for key, value in paths.flatten(params).items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise UnreadableCheckpointError(
                f"{source} holds non-finite values (NaN or infinity) in {key!r}: it comes from a "
                "diverged run. Start from an earlier checkpoint of that run."
            )


def restore_into(
    path: str | os.PathLike,
    model: VisionTransformer,
    rng: jax.Array,
    *,
    keep_pre_logits: bool = False,
    method: str = DEFAULT_METHOD,
    antialias: bool = DEFAULT_ANTIALIAS,
    channels: int | None = None,
    old_grid: tuple[int, int] | None = None,
    sharding: jax.sharding.Sharding | None = None,
    verbose: bool = True,
) -> tuple[dict, Report]:
    """Parameters for `model` from the checkpoint at `path`, adapted and placed on devices.

    The stored shapes are checked against the model first (a checkpoint of another architecture
    raises CheckpointMismatchError before anything is read); then the parameters are read,
    adapted (position embeddings and bias tables moved to the model's grid as its posemb_mode
    says: resized, or a bias table clamped with "extrapolate"; the patch kernel to
    its patch size and to `channels`-channel images (default: the checkpoint's; RGB <->
    grayscale), the head re-initialised from `rng` if the class count differs, per-block <->
    scanned layout) and put on `sharding` (default: the default device).
    Prints the report table unless verbose=False. Options: see `adapt.plan`. `path`: a path,
    URL or published name (see `locate`).
    Returns (params, report).
    """
    path = locate(path)
    shapes, meta = checkpoint_shapes(path)
    the_plan = adapt.plan(
        shapes,
        meta,
        model,
        keep_pre_logits=keep_pre_logits,
        method=method,
        antialias=antialias,
        channels=channels,
        old_grid=old_grid,
    )
    stored, _ = load_params(path)
    check_finite(stored, meta["path"])
    params = adapt.execute(the_plan, stored, rng, scan=model.scan)
    params = jax.device_put(params, sharding)
    if verbose:
        print(the_plan.report)
    return params, the_plan.report
