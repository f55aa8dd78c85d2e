"""Orbax checkpoints of a training run: state, data-iterator position and config, together.

Layout: WORKDIR/checkpoints/<step>/{state, data, config}
  state   the train state dict (params, opt_state, step, rng), saved as replicated global arrays
  data    the grain iterator's position (per process), so a resume reads exactly the next batch
  config  the resolved config as JSON (read by `vit_jax.tools.inspect` and `init_from`)

Saves are asynchronous: training goes on while the files are written; a step directory only
appears once complete (Orbax writes to a temporary directory and renames it), so a run killed
mid-save resumes from the previous complete checkpoint.
"""

from __future__ import annotations

import os

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging


def open_manager(workdir: str, *, keep: int, save_every: int) -> ocp.CheckpointManager:
    """A CheckpointManager for WORKDIR/checkpoints keeping the last `keep` checkpoints."""
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        # Every `save_every` steps and when the cluster announces a preemption; not Orbax's
        # default extra save at the first step (a full state write, unwanted on big models).
        save_decision_policy=policies.AnySavePolicy(
            [
                policies.FixedIntervalPolicy(save_every),
                policies.PreemptionCheckpointingPolicy(),
            ]
        ),
        enable_async_checkpointing=True,
        create=True,
    )
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=options,
        item_handlers={
            "state": ocp.StandardCheckpointHandler(),
            "data": grain.checkpoint.CheckpointHandler(),
            "config": ocp.JsonCheckpointHandler(),
        },
    )


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state,
    data_iterator,
    config: dict,
    *,
    force: bool = False,
) -> bool:
    """Starts an asynchronous save of `state` and the iterator position; False if not due."""
    return manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            config=ocp.args.JsonSave(config),
        ),
        force=force,
    )


def data_position_saved(manager: ocp.CheckpointManager, step: int) -> bool:
    """True if `step` holds this process's iterator position (grain writes one file per process
    named process_{i}-of-{n}.json; a run on another number of processes finds none)."""
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    return (manager.directory / str(step) / "data" / name).exists()


def restore_latest(manager: ocp.CheckpointManager, abstract_state, data_iterator):
    """Restores the newest checkpoint into `abstract_state`'s shapes and shardings and moves
    `data_iterator` to its saved position. Returns the state, or None if there is none.

    Resuming on another number of processes restores the state but starts the data iterator
    afresh (the saved positions belong to other shards); a warning says so.
    """
    step = manager.latest_step()
    if step is None:
        return None
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_position_saved(manager, step):
        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    else:
        logging.warning(
            "checkpoint %d was written by another number of processes: the data iterator "
            "starts afresh (training is no longer bit-identical to an uninterrupted run).",
            step,
        )
    return manager.restore(step, args=ocp.args.Composite(**items))["state"]


def stored_config(manager: ocp.CheckpointManager, step: int) -> dict:
    """The config JSON saved with checkpoint `step` ({} if it has none)."""
    try:
        restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    except (FileNotFoundError, KeyError, ValueError):
        return {}
    return restored["config"] or {}
