"""The training loop: config in, trained and evaluated checkpoints out.

    train_and_evaluate(config, workdir)

The config is checked once, field by field (`vit_jax.train.config.validate`), before anything
is read; the dataset is then opened once and shared by the training stream and every evaluation.
Every error a user can cause (a bad field, unknown dataset, unprepared data, a batch that does
not split over the devices, an unwritable workdir) is raised before anything compiles.
A rerun with the same workdir resumes from the newest checkpoint: same next batch, same rng.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import data
from vit_jax.checkpoint import manager as ckpt
from vit_jax.train import optim, parallel
from vit_jax.train.config import Settings, validate, with_dataset
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


def evaluate(par, eval_step, params, dataset: data.Dataset, image_size, batch_size: int) -> dict:
    """Accuracy and mean loss over every example of the opened dataset's eval split (padding
    masked out); `batch_size` is global."""
    totals = {"correct": 0.0, "loss": 0.0, "count": 0.0}
    for batch in data.eval_batches(dataset, image_size=image_size, global_batch_size=batch_size):
        sums = eval_step(params, par.put_batch(batch))
        for k in totals:
            totals[k] += float(par.metric(sums[k]))
    count = max(totals["count"], 1.0)
    return {
        "accuracy": totals["correct"] / count,
        "loss": totals["loss"] / count,
        "num_examples": int(totals["count"]),
    }


def initial_params(settings: Settings, rng, channels: int, sharding):
    """Fresh parameters (initialised directly with `sharding`), or those of `init_from` adapted
    to the model (its shapes are checked before anything is read)."""
    model, init_from = settings.model, settings.train.init_from
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
        **dataclasses.asdict(settings.restore),
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
    settings = validate(config)  # every field of every section, before anything is read
    workdir = prepare_workdir(workdir)
    dataset = data.open_dataset(settings.data)  # opened once: every loader and eval reuses it
    info = dataset.info
    settings = with_dataset(settings, info)
    run, model = settings.train, settings.model
    par = parallel.make(run.parallel)
    tx, schedule = optim.make_optimizer(settings.optimizer, run.total_steps)
    config_dict = json.loads(settings.config.to_json_best_effort())
    manager = ckpt.open_manager(
        workdir, keep=run.keep_checkpoints, save_every=run.checkpoint_every_steps
    )
    check_same_run(manager, config_dict)

    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(run.seed))
    replicated = parallel.global_replicated()
    state = None
    if manager.latest_step() is None:  # init_from is read and checked before any data loads
        params = initial_params(settings, init_rng, info.channels, replicated)
        state = jax.jit(lambda p, r: create_state(p, tx, r), out_shardings=replicated)(
            params, train_rng
        )
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config_dict, f, indent=2)

    train_iter = iter(
        data.train_loader(
            dataset,
            image_size=model.image_size,
            global_batch_size=run.batch_size,
            seed=run.seed,
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
    reporter = Reporter(workdir, run.total_steps, start_step)
    if resumed:
        reporter.message(f"resumed from {manager.directory} at step {start_step}")
    base_rng = jnp.asarray(to_host(state["rng"]))
    state = par.put_state(state)

    train_step = par.compile_train(
        make_train_step(
            model,
            tx,
            schedule,
            label_smoothing=run.label_smoothing,
            mixup_alpha=run.mixup_alpha,
            grad_accum_steps=run.grad_accum_steps,
            axis_name=par.axis_name,
        )
    )
    eval_step = par.compile_eval(make_eval_step(model, axis_name=par.axis_name))
    n_params = sum(x.size for x in jax.tree.leaves(abstract["params"]))
    reporter.message(
        f"{settings.config.model.variant} ({n_params:,} parameters) on {settings.data.name}: "
        f"{info.num_train} train / {info.num_eval} eval images, batch {run.batch_size} over "
        f"{jax.device_count()} devices ({run.parallel}), "
        f"steps {start_step}->{run.total_steps}"
    )

    pending, last_time, last_step = [], time.perf_counter(), start_step
    train_start = time.perf_counter()
    for step in range(start_step, run.total_steps):
        batch = par.put_batch(next(train_iter))
        rng = jax.random.fold_in(base_rng, step)
        state, metrics = train_step(state, batch, par.put_rng(rng))
        pending.append(metrics)
        done = step + 1
        if done % run.log_every_steps == 0 or done == run.total_steps:
            means = {k: np.mean([par.metric(m[k]) for m in pending]) for k in pending[0]}
            now = time.perf_counter()
            reporter.train(done, means, (done - last_step) * run.batch_size / (now - last_time))
            pending, last_time, last_step = [], now, done
        if run.eval_every_steps and done % run.eval_every_steps == 0 and done < run.total_steps:
            result = evaluate(
                par, eval_step, state["params"], dataset, model.image_size, run.eval_batch_size
            )
            reporter.eval(done, "eval", **result)
        preempted = manager.reached_preemption(done)
        if done == run.total_steps or manager.should_save(done):
            ckpt.save(manager, done, par.host_state(state), train_iter, config_dict, force=True)
        if preempted:
            manager.wait_until_finished()
            manager.close()
            reporter.message(f"preempted at step {done}: checkpoint saved; rerun to resume")
            reporter.close()
            return {"step": done, "preempted": True}
    train_seconds = time.perf_counter() - train_start

    result = evaluate(
        par, eval_step, state["params"], dataset, model.image_size, run.eval_batch_size
    )
    final_step = int(par.metric(state["step"]))
    reporter.eval(final_step, "eval", **result)
    manager.wait_until_finished()
    manager.close()
    steps_run = final_step - start_step
    summary = {
        "step": final_step,
        **result,
        "train_seconds": train_seconds,
        "img_per_sec": steps_run * run.batch_size / train_seconds if train_seconds else 0.0,
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
