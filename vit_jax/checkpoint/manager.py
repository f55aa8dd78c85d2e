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

import orbax.checkpoint as ocp

from vit_jax.checkpoint import layout


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
    )
    return ocp.CheckpointManager(
        layout.checkpoints_dir(workdir), options=options, item_handlers=layout.item_handlers()
    )


def save(
    manager: ocp.CheckpointManager, step: int, state, config: dict, *, force: bool = False
) -> bool:
    """Starts an asynchronous save of `state` with the run's config; False if not due."""
    return manager.save(step, args=layout.save_args(state, config=config), force=force)


def restore_latest(manager: ocp.CheckpointManager, abstract_state):
    """Restores the newest checkpoint into `abstract_state`'s shapes and shardings (any mesh,
    any number of processes: Orbax reshards). Returns the state, or None if there is none.

    The data position is the state's step (the loader starts there): a `data` item that
    earlier versions wrote is not read.
    """
    step = manager.latest_step()
    if step is None:
        return None
    items = {layout.STATE: ocp.args.StandardRestore(abstract_state)}
    return manager.restore(step, args=ocp.args.Composite(**items))[layout.STATE]


def stored_config(manager: ocp.CheckpointManager, step: int) -> dict:
    """The config JSON saved with checkpoint `step` ({} if it has none)."""
    try:
        return layout.read_config(str(manager.directory / str(step))) or {}
    except (FileNotFoundError, KeyError, ValueError):
        return {}
