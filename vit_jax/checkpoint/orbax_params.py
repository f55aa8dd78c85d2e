"""The parameters of an Orbax checkpoint written by the trainer, read without knowing the model.

Only `state["params"]` is read (layout.py has the layout): its shapes come from the checkpoint's
metadata, then a partial restore brings back just those arrays as host numpy arrays (the
optimizer state is never read). The stored `config`'s `model` entry tells the grid and layout of
the stored model.

`save_orbax_params` writes the same layout with only {"params"} in `state` (for tools/convert).
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from vit_jax.checkpoint import layout
from vit_jax.checkpoint.errors import UnreadableCheckpointError
from vit_jax.checkpoint.orbax_reads import failed_reads_unreported, failure_reason
from vit_jax.models.paths import is_scanned


def read_orbax_shapes(path: str | os.PathLike) -> tuple[dict, dict]:
    """Parameter shapes (nested ShapeDtypeStructs) and metadata of an Orbax checkpoint, from its
    metadata only. `path`: a workdir or checkpoints directory (newest step) or a step directory."""
    directory, step = layout.find_step_dir(os.fspath(path))
    state = os.path.join(directory, layout.STATE)
    with failed_reads_unreported():
        reason = None
        try:
            params = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state))[layout.PARAMS]
        except (KeyError, TypeError, ValueError, FileNotFoundError) as e:
            reason = failure_reason(e)  # raised below, unchained (see failed_reads_unreported)
        if reason is not None:
            raise UnreadableCheckpointError(
                f"{state} has no readable '{layout.PARAMS}' ({reason}); it was not written by "
                "vit_jax's trainer or is incomplete. Use another step or checkpoint."
            )
    shapes = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), dict(params))
    meta = {
        "path": directory,
        "format": "orbax",
        "layout": "vit_jax",
        "naming": "pre-linen",
        "scanned": is_scanned(shapes),
        "step": step,
        "num_prefix_tokens": {},
        "config": layout.read_config(directory),
    }
    return shapes, meta


def load_orbax_params(path: str | os.PathLike) -> tuple[dict, dict]:
    """Parameters (nested numpy arrays, as stored: per-block or scanned) and metadata of an
    Orbax checkpoint; only `state["params"]` is read."""
    shapes, meta = read_orbax_shapes(path)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), shapes)
    state = os.path.join(meta["path"], layout.STATE)
    with failed_reads_unreported():
        try:
            restored = ocp.PyTreeCheckpointer().restore(
                state,
                args=ocp.args.PyTreeRestore(
                    item={layout.PARAMS: shapes},
                    restore_args={layout.PARAMS: restore_args},
                    partial_restore=True,
                ),
            )
        except Exception as e:  # Orbax and TensorStore raise many types for damaged files
            reason = failure_reason(e)  # raised below, unchained (see failed_reads_unreported)
        else:
            return restored[layout.PARAMS], meta
        raise UnreadableCheckpointError(
            f"{state} cannot be read ({reason}): the checkpoint is damaged or incomplete. Use "
            "another step or checkpoint."
        )


def save_orbax_params(
    path: str | os.PathLike, params: dict, *, config: dict | None = None, step: int = 0
) -> str:
    """Writes `params` as PATH/<step>/state = {"params": ...} (and PATH/<step>/config if given),
    the layout `load_orbax_params` and `init_from` read. Returns the step directory."""
    path = os.path.abspath(os.fspath(path))
    handlers = layout.item_handlers(config=config is not None)
    with ocp.CheckpointManager(path, item_handlers=handlers) as manager:
        manager.save(
            step, args=layout.save_args({layout.PARAMS: params}, config=config), force=True
        )
        manager.wait_until_finished()
    return os.path.join(path, str(step))
