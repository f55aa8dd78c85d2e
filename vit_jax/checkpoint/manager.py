"""Orbax checkpoints of a training run: the train state and the config, together.

The layout (WORKDIR/checkpoints/<step>/{state, config}) is in checkpoint/layout.py. The data
position is the state's step (the training stream is a function of the seed and the step), so
a resume reads exactly the next batch on any topology; the config is read by
`vit_jax.tools.inspect` and `init_from`.

Saves are asynchronous: training goes on while the files are written; a step directory only
appears once complete (Orbax writes to a temporary directory and renames it), so a run killed
mid-save resumes from the previous complete checkpoint.
"""

from __future__ import annotations

import os
import time

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from vit_jax.checkpoint import layout
from vit_jax.checkpoint.errors import UnreadableCheckpointError
from vit_jax.checkpoint.orbax_reads import failed_reads_unreported, failure_reason


def open_manager(
    workdir: str, *, keep: int, save_every: int, save_every_minutes: float = 0.0
) -> ocp.CheckpointManager:
    """A CheckpointManager for WORKDIR/checkpoints keeping the last `keep` checkpoints, saving
    every `save_every` steps, once `save_every_minutes` have passed since the last save (if
    > 0; decided on process 0 and shared by Orbax), and when the cluster announces a
    preemption; not Orbax's default extra save at the first step (a full state write,
    unwanted on big models)."""
    policies = ocp.checkpoint_managers
    when = [policies.FixedIntervalPolicy(save_every), policies.PreemptionCheckpointingPolicy()]
    if save_every_minutes > 0:
        seconds = round(save_every_minutes * 60)
        when.append(policies.ContinuousCheckpointingPolicy(minimum_interval_secs=seconds))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        save_decision_policy=policies.AnySavePolicy(when),
        enable_async_checkpointing=True,
        create=True,
        cleanup_tmp_directories=True,  # a save a kill interrupted is never restored: removed
    )
    return ocp.CheckpointManager(
        layout.checkpoints_dir(workdir), options=options, item_handlers=layout.item_handlers()
    )


def save(
    manager: ocp.CheckpointManager, step: int, state, config: dict, *, force: bool = False
) -> bool:
    """Starts an asynchronous save of `state` with the run's config; False if not due."""
    return manager.save(step, args=layout.save_args(state, config=config), force=force)


DAMAGED = "damaged_checkpoints"  # WORKDIR/damaged_checkpoints/<step>: moved aside, kept


def restore_latest(manager: ocp.CheckpointManager, abstract_state, report=logging.warning):
    """Restores the newest readable checkpoint into `abstract_state`'s shapes and shardings
    (any mesh, any number of processes: Orbax reshards). Returns the state, or None if there is
    no checkpoint.

    A checkpoint that cannot be read (a truncated, zero-filled or deleted file, a missing
    manifest or item, an empty step directory) is named with the reason through `report`,
    moved aside to WORKDIR/damaged_checkpoints/<step> (not deleted), and the previous one is
    tried. If the oldest one cannot be read either, it stays where it is and
    UnreadableCheckpointError says so: a run never starts from scratch over checkpoints.
    The data position is the state's step (the loader starts there): a `data` item that
    earlier versions wrote is not read.
    """
    with failed_reads_unreported():
        return _restore_readable(manager, abstract_state, report)


def _restore_readable(manager: ocp.CheckpointManager, abstract_state, report):
    while (step := manager.latest_step()) is not None:
        try:
            items = ocp.args.Composite(**{layout.STATE: ocp.args.StandardRestore(abstract_state)})
            return manager.restore(step, args=items)[layout.STATE]
        except Exception as e:  # Orbax and TensorStore raise many types for damaged files
            reason = failure_reason(e)  # raised below, unchained (see failed_reads_unreported)
        if len(manager.all_steps()) == 1:
            damaged = manager.directory.parent / DAMAGED
            older = f" (older damaged checkpoints are in {damaged})" if damaged.is_dir() else ""
            raise UnreadableCheckpointError(
                f"checkpoint {step} in {manager.directory} cannot be read ({reason}), and no "
                "earlier one is left. Restore it from a copy, or start afresh in a new "
                f"--workdir{older}."
            )
        moved = _move_aside(manager, step)
        report(
            f"checkpoint {step} cannot be read ({reason}); moved to {DAMAGED}/{moved}, trying "
            "the previous one"
        )
    return None


def _move_aside(manager: ocp.CheckpointManager, step: int) -> str:
    """Moves checkpoints/<step> to WORKDIR/damaged_checkpoints/<step>-<unix time> (process 0;
    the others wait for it), makes the manager forget it and returns that folder's name."""
    source, damaged = manager.directory / str(step), manager.directory.parent / DAMAGED
    if jax.process_index() == 0:
        damaged.mkdir(parents=True, exist_ok=True)
        source.rename(damaged / f"{step}-{int(time.time())}")
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"vit_jax_damaged_checkpoint_{step}")
    manager.reload()
    # The name process 0 gave it, read back by every process (the workdir is shared).
    moved = [p.name for p in damaged.glob(f"{step}-*")] if damaged.is_dir() else []
    return max(moved, key=lambda name: int(name.rpartition("-")[2]), default=f"{step}-?")


def newest_stored_config(workdir: str) -> dict | None:
    """The config saved with the newest checkpoint of WORKDIR/checkpoints that has a readable
    one, without opening a manager; {} if there are checkpoints but none has; None if there are
    none (a fresh start)."""
    directory = layout.checkpoints_dir(workdir)
    names = os.listdir(directory) if os.path.isdir(directory) else []
    finished = [n for n in names if n.isdigit() and layout.is_step_dir(os.path.join(directory, n))]
    steps = sorted((int(n) for n in finished), reverse=True)
    if not steps:
        return None
    for step in steps:
        config = layout.read_config(os.path.join(directory, str(step)))
        if config:
            return config
    return {}


def stored_config(manager: ocp.CheckpointManager, step: int) -> dict:
    """The config JSON saved with checkpoint `step` ({} if it has none)."""
    try:
        return layout.read_config(str(manager.directory / str(step))) or {}
    except (FileNotFoundError, KeyError, ValueError):
        return {}
