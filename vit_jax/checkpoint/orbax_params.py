"""The parameters of an Orbax checkpoint written by the trainer, read without knowing the model.

The trainer (checkpoint/manager.py) writes WORKDIR/checkpoints/<step>/{state, data, config}, with
`state` = {"params", "opt_state", "step", "rng"}. Here only `state["params"]` is read: its shapes
come from the checkpoint's metadata, then a partial restore brings back just those arrays as host
numpy arrays (the optimizer state is never read). `config` is the run's config as JSON; its
`model` entry tells the grid and layout of the stored model.

`save_orbax_params` writes the same layout with only {"params"} in `state` (for tools/convert).
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from vit_jax.checkpoint.errors import UnreadableCheckpointError
from vit_jax.models.scan import is_scanned


def step_dir(path: str) -> tuple[str, int | None]:
    """The step directory that `path` names: `path` itself if it holds a `state` item, else the
    newest finished step of a checkpoints directory (or of WORKDIR/checkpoints for a workdir).
    Returns (directory, step)."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory {path} does not exist.")
    if os.path.isdir(os.path.join(path, "state")):
        name = os.path.basename(path)
        return path, int(name) if name.isdigit() else None
    if os.path.isdir(os.path.join(path, "checkpoints")):
        path = os.path.join(path, "checkpoints")
    steps = [
        int(d)
        for d in os.listdir(path)
        if d.isdigit() and os.path.isdir(os.path.join(path, d, "state"))
    ]
    if not steps:
        raise UnreadableCheckpointError(
            f"{path} is not a checkpoint: it has neither a 'state' item nor finished step "
            "directories <step>/state. Pass WORKDIR/checkpoints, one of its step directories, "
            "or an .npz file."
        )
    return os.path.join(path, str(max(steps))), max(steps)


def _read_config(directory: str) -> dict | None:
    if not os.path.isdir(os.path.join(directory, "config")):
        return None
    return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(os.path.join(directory, "config"))


def read_orbax_shapes(path: str | os.PathLike) -> tuple[dict, dict]:
    """Parameter shapes (nested ShapeDtypeStructs) and metadata of an Orbax checkpoint, from its
    metadata only. `path`: a checkpoints directory (newest step) or a step directory."""
    directory, step = step_dir(os.fspath(path))
    try:
        state = epath.Path(directory) / "state"
        params = ocp.PyTreeCheckpointHandler().metadata(state)["params"]
    except (KeyError, TypeError, ValueError, FileNotFoundError) as e:
        raise UnreadableCheckpointError(
            f"{directory}/state has no readable 'params' ({type(e).__name__}: {e}); it was not "
            "written by vit_jax's trainer or is incomplete. Use another step or checkpoint."
        ) from e
    shapes = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), dict(params))
    config = _read_config(directory)
    meta = {
        "path": directory,
        "format": "orbax",
        "layout": "vit_jax",
        "naming": "pre-linen",
        "scanned": is_scanned(shapes),
        "step": step,
        "posemb_prefix_tokens": None,
        "config": config,
    }
    return shapes, meta


def load_orbax_params(path: str | os.PathLike) -> tuple[dict, dict]:
    """Parameters (nested numpy arrays, as stored: per-block or scanned) and metadata of an
    Orbax checkpoint; only `state["params"]` is read."""
    shapes, meta = read_orbax_shapes(path)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), shapes)
    restored = ocp.PyTreeCheckpointer().restore(
        os.path.join(meta["path"], "state"),
        args=ocp.args.PyTreeRestore(
            item={"params": shapes},
            restore_args={"params": restore_args},
            partial_restore=True,
        ),
    )
    return restored["params"], meta


def save_orbax_params(
    path: str | os.PathLike, params: dict, *, config: dict | None = None, step: int = 0
) -> str:
    """Writes `params` as PATH/<step>/state = {"params": ...} (and PATH/<step>/config if given),
    the layout `load_orbax_params` and `init_from` read. Returns the step directory."""
    path = os.path.abspath(os.fspath(path))
    items = {"state": ocp.args.StandardSave({"params": params})}
    handlers = {"state": ocp.StandardCheckpointHandler()}
    if config is not None:
        items["config"] = ocp.args.JsonSave(config)
        handlers["config"] = ocp.JsonCheckpointHandler()
    with ocp.CheckpointManager(path, item_handlers=handlers) as manager:
        manager.save(step, args=ocp.args.Composite(**items), force=True)
        manager.wait_until_finished()
    return os.path.join(path, str(step))
