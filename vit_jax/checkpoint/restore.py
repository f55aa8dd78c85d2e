"""Load a checkpoint of any supported kind, and restore it into a model (`init_from`).

A checkpoint is named by a path: an Orbax checkpoints directory (its newest step; a training
workdir works too), one step directory of it, or an `.npz` file in the official ViT or big_vision
layout.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from vit_jax.checkpoint import adapt
from vit_jax.checkpoint.errors import UnreadableCheckpointError
from vit_jax.checkpoint.npz import load_npz, read_npz_shapes
from vit_jax.checkpoint.orbax_params import load_orbax_params, read_orbax_shapes
from vit_jax.checkpoint.report import Report
from vit_jax.models import VisionTransformer, paths


def _is_orbax(path: str) -> bool:
    if os.path.isdir(path):
        return True
    if os.path.isfile(path):
        return False
    raise FileNotFoundError(
        f"checkpoint {path} does not exist. Pass an Orbax checkpoints directory "
        "(WORKDIR/checkpoints), one of its step directories, or an .npz file."
    )


def checkpoint_shapes(path: str | os.PathLike) -> tuple[dict, dict]:
    """(shapes, meta) of a checkpoint without reading its arrays: nested ShapeDtypeStructs in
    this package's parameter names (per-block or scanned, as stored), and a metadata dict with
    `path`, `format` ("npz" | "orbax"), `layout` ("official" | "big_vision" | "vit_jax"),
    `naming`, `scanned`, `step`, `num_prefix_tokens` (class-token rows of grid parameters that
    the layout fixes, by leaf name) and `config` (the stored config or None).
    """
    path = os.fspath(path)
    return read_orbax_shapes(path) if _is_orbax(path) else read_npz_shapes(path)


def load_params(path: str | os.PathLike) -> tuple[dict, dict]:
    """(params, meta): the stored parameters as nested host numpy arrays in this package's names
    (per-block or scanned, as stored) and the metadata of `checkpoint_shapes`."""
    path = os.fspath(path)
    return load_orbax_params(path) if _is_orbax(path) else load_npz(path)


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
    method: str = "cubic",
    antialias: bool = True,
    channels: int | None = None,
    old_grid: tuple[int, int] | None = None,
    sharding: jax.sharding.Sharding | None = None,
    verbose: bool = True,
) -> tuple[dict, Report]:
    """Parameters for `model` from the checkpoint at `path`, adapted and placed on devices.

    The stored shapes are checked against the model first (a checkpoint of another architecture
    raises CheckpointMismatchError before anything is read); then the parameters are read,
    adapted (position embeddings and bias tables resized to the model's grid, the patch kernel to
    its patch size, the head re-initialised from `rng` if the class count differs, per-block <->
    scanned layout) and put on `sharding` (default: the default device).
    Prints the report table unless verbose=False. Options: see `adapt.plan`.
    Returns (params, report).
    """
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
