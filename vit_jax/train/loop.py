"""The training loop: config in, trained and evaluated checkpoints out.

    train_and_evaluate(config, workdir)

Every error a user can cause (unknown dataset, unprepared data, bad model fields, a batch that
does not split over the devices, an unwritable workdir) is raised before anything compiles.
A rerun with the same workdir resumes from the newest checkpoint: same next batch, same rng.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import data, models
from vit_jax.checkpoint import manager as ckpt
from vit_jax.models.resize import RESIZE_METHODS
from vit_jax.train import optim, parallel
from vit_jax.train.parallel import to_host
from vit_jax.train.reporting import Reporter, format_duration
from vit_jax.train.state import create_state, init_params
from vit_jax.train.step import make_eval_step, make_train_step


def prepare_workdir(workdir: str) -> str:
    """Creates the workdir and checks it can be written; returns its absolute path."""
    if "://" in workdir:
        raise ValueError(
            f"workdir={workdir!r} is a URL; metrics and config files are written with local file "
            "I/O: use a local or mounted path (e.g. a bucket mounted with gcsfuse, or NFS)."
        )
    workdir = os.path.abspath(os.path.expanduser(workdir))
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ValueError(
            f"workdir={workdir!r} cannot be written ({e.strerror}): pass a --workdir you can "
            "write to."
        ) from None
    return workdir


def resolve_config(config, info: data.DatasetInfo):
    """Fills what the dataset decides: num_classes (if unset) and total_steps (from num_epochs).

    Returns a new, locked config; raises ValueError on fields that cannot work.
    """
    config = config.copy_and_resolve_references()
    with config.unlocked():
        if config.model.get("num_classes") is None:
            config.model.num_classes = info.num_classes
        if config.get("num_epochs") is not None:
            config.total_steps = math.ceil(config.num_epochs * info.num_train / config.batch_size)
    if config.model.num_classes != info.num_classes:
        raise ValueError(
            f"model.num_classes={config.model.num_classes} but the dataset has "
            f"{info.num_classes} classes: set --config.model.num_classes={info.num_classes}."
        )
    if config.total_steps <= 0:
        raise ValueError(f"total_steps={config.total_steps} must be positive.")
    if config.model.classifier == "unpooled":
        raise ValueError(
            "model.classifier='unpooled' gives per-token logits, which a classification run "
            "cannot train on: use 'token', 'gap' or 'map' (unpooled is for feature extraction)."
        )
    if config.grad_accum_steps < 1 or config.mixup_alpha < 0:
        raise ValueError(
            f"grad_accum_steps={config.grad_accum_steps} must be >= 1 and "
            f"mixup_alpha={config.mixup_alpha} >= 0 (0 turns mixup off)."
        )
    if config.init_options.method not in RESIZE_METHODS:
        raise ValueError(
            f"init_options.method={config.init_options.method!r} is unknown; "
            f"use one of {RESIZE_METHODS}."
        )
    if not 0 <= config.label_smoothing < 1:
        raise ValueError(f"label_smoothing={config.label_smoothing} must be in [0, 1).")
    optim.check(config.optimizer)
    parallel.check_batch_size(config.batch_size, config.get("grad_accum_steps", 1))
    parallel.check_batch_size(config.eval_batch_size)
    if config.parallel not in parallel.STRATEGIES:
        raise ValueError(
            f"parallel={config.parallel!r} is unknown; use one of {parallel.STRATEGIES}."
        )
    config.lock()
    return config


def evaluate(par, eval_step, params, config, image_size) -> dict:
    """Accuracy and mean loss over every example of the eval split (padding masked out)."""
    totals = {"correct": 0.0, "loss": 0.0, "count": 0.0}
    for batch in data.eval_batches(
        config.data, image_size=image_size, global_batch_size=config.eval_batch_size
    ):
        sums = eval_step(params, par.put_batch(batch))
        for k in totals:
            totals[k] += float(par.metric(sums[k]))
    count = max(totals["count"], 1.0)
    return {
        "accuracy": totals["correct"] / count,
        "loss": totals["loss"] / count,
        "num_examples": int(totals["count"]),
    }


def initial_params(config, model, rng, channels: int, sharding):
    """Fresh parameters (initialised directly with `sharding`), or those of `config.init_from`
    adapted to this model (its shapes are checked before anything is read)."""
    init_from = config.get("init_from")
    if not init_from:
        return jax.jit(lambda r: init_params(model, r, channels), out_shardings=sharding)(rng)
    from vit_jax.checkpoint import restore_into

    params, _ = restore_into(
        init_from,
        model,
        rng,
        channels=channels,
        sharding=sharding,
        verbose=jax.process_index() == 0,
        **dict(config.init_options),
    )
    return params


def check_same_run(manager, config_dict: dict) -> None:
    """Raises ValueError if the workdir's newest checkpoint is of another model or optimizer,
    which could not be resumed (use a new workdir, or start from it with init_from)."""
    step = manager.latest_step()
    if step is None:
        return
    stored = ckpt.stored_config(manager, step)
    changed = [
        f"{section}.{key}: {old!r} -> {config_dict[section].get(key)!r}"
        for section in ("model", "optimizer")
        for key, old in stored.get(section, {}).items()
        if config_dict[section].get(key) != old and (section == "model" or key == "name")
    ]
    if changed:
        raise ValueError(
            f"the workdir holds a run (step {step}) of another model or optimizer "
            f"({'; '.join(changed)}), which cannot be resumed: use a new --workdir, or start "
            f"from that run with --config.init_from={manager.directory}."
        )


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains `config` in `workdir` (resuming if it holds checkpoints) and evaluates it.

    Returns the final summary: {"step", "accuracy", "loss", "num_examples", "train_seconds",
    "img_per_sec"} (and "preempted": True if the run stopped for a preemption).
    """
    workdir = prepare_workdir(workdir)
    info = data.dataset_info(config.data)
    config = resolve_config(config, info)
    model = models.build(config.model)
    par = parallel.make(config.parallel)
    tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
    config_dict = json.loads(config.to_json_best_effort())
    manager = ckpt.open_manager(
        workdir, keep=config.keep_checkpoints, save_every=config.checkpoint_every_steps
    )
    check_same_run(manager, config_dict)

    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    replicated = parallel.global_replicated()
    state = None
    if manager.latest_step() is None:  # init_from is read and checked before any data loads
        params = initial_params(config, model, init_rng, info.channels, replicated)
        state = jax.jit(lambda p, r: create_state(p, tx, r), out_shardings=replicated)(
            params, train_rng
        )
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config_dict, f, indent=2)

    train_iter = iter(
        data.train_loader(
            config.data,
            image_size=model.image_size,
            global_batch_size=config.batch_size,
            seed=config.seed,
        )
    )
    abstract = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
        jax.eval_shape(
            lambda: create_state(init_params(model, init_rng, info.channels), tx, train_rng)
        ),
    )
    resumed = state is None
    if resumed:
        state = ckpt.restore_latest(manager, abstract, train_iter)
    start_step = int(to_host(state["step"]))
    reporter = Reporter(workdir, config.total_steps, start_step)
    if resumed:
        reporter.message(f"resumed from {manager.directory} at step {start_step}")
    base_rng = jnp.asarray(to_host(state["rng"]))
    state = par.put_state(state)

    train_step = par.compile_train(
        make_train_step(
            model,
            tx,
            schedule,
            label_smoothing=config.label_smoothing,
            mixup_alpha=config.mixup_alpha,
            grad_accum_steps=config.grad_accum_steps,
            axis_name=par.axis_name,
        )
    )
    eval_step = par.compile_eval(make_eval_step(model, axis_name=par.axis_name))
    n_params = sum(x.size for x in jax.tree.leaves(abstract["params"]))
    reporter.message(
        f"{config.model.variant} ({n_params:,} parameters) on {config.data.name}: "
        f"{info.num_train} train / {info.num_eval} eval images, batch {config.batch_size} over "
        f"{jax.device_count()} devices ({config.parallel}), "
        f"steps {start_step}->{config.total_steps}"
    )

    pending, last_time, last_step = [], time.perf_counter(), start_step
    train_start = time.perf_counter()
    for step in range(start_step, config.total_steps):
        batch = par.put_batch(next(train_iter))
        rng = jax.random.fold_in(base_rng, step)
        state, metrics = train_step(state, batch, par.put_rng(rng))
        pending.append(metrics)
        done = step + 1
        if done % config.log_every_steps == 0 or done == config.total_steps:
            means = {k: np.mean([par.metric(m[k]) for m in pending]) for k in pending[0]}
            now = time.perf_counter()
            reporter.train(done, means, (done - last_step) * config.batch_size / (now - last_time))
            pending, last_time, last_step = [], now, done
        if (
            config.eval_every_steps
            and done % config.eval_every_steps == 0
            and done < config.total_steps
        ):
            result = evaluate(par, eval_step, state["params"], config, model.image_size)
            reporter.eval(done, "eval", **result)
        preempted = manager.reached_preemption(done)
        if done == config.total_steps or manager.should_save(done):
            ckpt.save(manager, done, par.host_state(state), train_iter, config_dict, force=True)
        if preempted:
            manager.wait_until_finished()
            manager.close()
            reporter.message(f"preempted at step {done}: checkpoint saved; rerun to resume")
            reporter.close()
            return {"step": done, "preempted": True}
    train_seconds = time.perf_counter() - train_start

    result = evaluate(par, eval_step, state["params"], config, model.image_size)
    final_step = int(par.metric(state["step"]))
    reporter.eval(final_step, "eval", **result)
    manager.wait_until_finished()
    manager.close()
    steps_run = final_step - start_step
    summary = {
        "step": final_step,
        **result,
        "train_seconds": train_seconds,
        "img_per_sec": steps_run * config.batch_size / train_seconds if train_seconds else 0.0,
    }
    reporter.message(
        f"done: step {final_step}, eval accuracy {result['accuracy']:.4f} on "
        f"{result['num_examples']} examples, {steps_run} steps in "
        f"{format_duration(train_seconds)} ({summary['img_per_sec']:,.0f} img/s)"
    )
    reporter.close()
    if hasattr(train_iter, "close"):
        train_iter.close()
    return summary
