"""Orbax checkpoints of a training run: state, data-iterator position and config, together.

The layout (WORKDIR/checkpoints/<step>/{state, data, config}) is in checkpoint/layout.py. The
data-iterator position lets a resume read exactly the next batch; the config is read by
`vit_jax.tools.inspect` and `init_from`.

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

from vit_jax.checkpoint import layout


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
        layout.checkpoints_dir(workdir), options=options, item_handlers=layout.item_handlers()
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
    return manager.save(step, args=layout.save_args(state, data_iterator, config), force=force)


def data_position_saved(manager: ocp.CheckpointManager, step: int) -> bool:
    """True if `step` holds this process's iterator position (grain writes one file per process
    named process_{i}-of-{n}.json; a run on another number of processes finds none)."""
    step_dir = str(manager.directory / str(step))
    return os.path.exists(
        layout.data_position_file(step_dir, jax.process_index(), jax.process_count())
    )


def restore_latest(manager: ocp.CheckpointManager, abstract_state, data_iterator):
    """Restores the newest checkpoint into `abstract_state`'s shapes and shardings and moves
    `data_iterator` to its saved position. Returns the state, or None if there is none.

    Resuming on another number of processes restores the state but starts the data iterator
    afresh (the saved positions belong to other shards); a warning says so.
    """
    step = manager.latest_step()
    if step is None:
        return None
    items = {layout.STATE: ocp.args.StandardRestore(abstract_state)}
    if data_position_saved(manager, step):
        items[layout.DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    else:
        logging.warning(
            "checkpoint %d was written by another number of processes: the data iterator "
            "starts afresh (training is no longer bit-identical to an uninterrupted run).",
            step,
        )
    return manager.restore(step, args=ocp.args.Composite(**items))[layout.STATE]


def stored_config(manager: ocp.CheckpointManager, step: int) -> dict:
    """The config JSON saved with checkpoint `step` ({} if it has none)."""
    try:
        return layout.read_config(str(manager.directory / str(step))) or {}
    except (FileNotFoundError, KeyError, ValueError):
        return {}
