"""The Orbax checkpoint layout of a run, known here only.

    WORKDIR/checkpoints/<step>/
      state   the train state dict {"params", "opt_state", "step", "rng"} (StandardSave)
      config  the resolved run config as JSON, and under CLASS_NAMES the dataset's class
              names (label i -> name), which `vit_jax.predict` shows
      data    (written by vit_jax 0.1 only: the grain iterator's position per process; the
              position is now the state's step, and this item is not read)

A step directory exists only once complete: Orbax writes to a temporary directory and renames
it. Params-only checkpoints (tools/convert) have the same layout with {"params"} in `state`.
"""

from __future__ import annotations

import os

import orbax.checkpoint as ocp
from absl import logging

from vit_jax.checkpoint.errors import UnreadableCheckpointError

CHECKPOINTS = "checkpoints"
STATE, CONFIG = "state", "config"
PARAMS = "params"  # the parameters' key in the state
CLASS_NAMES = "class_names"  # the class names' key in the config item (and WORKDIR/config.json)


def checkpoints_dir(workdir: str) -> str:
    """WORKDIR/checkpoints, absolute."""
    return os.path.join(os.path.abspath(workdir), CHECKPOINTS)


def item_handlers(*, config: bool = True) -> dict:
    """The Orbax handler of each item."""
    handlers = {STATE: ocp.StandardCheckpointHandler()}
    if config:
        handlers[CONFIG] = ocp.JsonCheckpointHandler()
    return handlers


def save_args(state, config: dict | None = None) -> ocp.args.Composite:
    """What a save writes: the state, and the config when given."""
    items = {STATE: ocp.args.StandardSave(state)}
    if config is not None:
        items[CONFIG] = ocp.args.JsonSave(config)
    return ocp.args.Composite(**items)


def is_step_dir(path: str) -> bool:
    """Whether `path` is one finished step directory (it holds a `state` item)."""
    return os.path.isdir(os.path.join(path, STATE))


def find_step_dir(path: str) -> tuple[str, int | None]:
    """The step directory that `path` names: `path` itself if it is one, else the newest
    finished step of a checkpoints directory (or of WORKDIR/checkpoints for a workdir).
    Returns (directory, step); the step is None for a directory not named by a number."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory {path} does not exist.")
    if is_step_dir(path):
        name = os.path.basename(path)
        return path, int(name) if name.isdigit() else None
    if os.path.isdir(os.path.join(path, CHECKPOINTS)):
        path = os.path.join(path, CHECKPOINTS)
    steps = [int(d) for d in os.listdir(path) if d.isdigit() and is_step_dir(os.path.join(path, d))]
    if not steps and os.path.basename(path) == CHECKPOINTS:
        raise UnreadableCheckpointError(
            f"{path} holds no finished checkpoint yet: a run saves one every "
            "checkpoint_every_steps and at its end, and a save cut short leaves none. Wait for "
            "the run's first save, or pass another workdir, step directory or .npz file."
        )
    if not steps:
        raise UnreadableCheckpointError(
            f"{path} is not a checkpoint: it has neither a '{STATE}' item nor finished step "
            f"directories <step>/{STATE}. Pass WORKDIR/{CHECKPOINTS}, one of its step "
            "directories, or an .npz file."
        )
    return os.path.join(path, str(max(steps))), max(steps)


def read_config(step_dir: str) -> dict | None:
    """The config JSON saved in a step directory, or None if it has none or it cannot be read
    (then what the parameters' shapes tell is used, as for a file without a config)."""
    if not os.path.isdir(os.path.join(step_dir, CONFIG)):
        return None
    try:
        config = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
            os.path.join(step_dir, CONFIG)
        )
    except Exception as e:  # a damaged item: JSON, Orbax and file errors alike
        logging.warning("the config saved in %s cannot be read (%s); ignored", step_dir, e)
        return None
    return config if isinstance(config, dict) else None
