"""The training loop: config in, trained and evaluated checkpoints out.

    train_and_evaluate(config, workdir)

The config is checked once, field by field (`vit_jax.train.config.validate`), before anything
is read; the dataset is then opened once and shared by the training stream and every evaluation.
Every error a user can cause (a bad field, unknown dataset, unprepared data, a batch that does
not split over the devices, an unwritable workdir) is raised before anything compiles.
A rerun with the same workdir resumes from the newest checkpoint: same next batch, same rng.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from vit_jax import data
from vit_jax.checkpoint import layout
from vit_jax.checkpoint import manager as ckpt
from vit_jax.models import VisionTransformer, paths
from vit_jax.models.posemb import param_rule
from vit_jax.train import cost, folders, optim, parallel, provenance, stopping
from vit_jax.train.config import Settings, validate, with_dataset
from vit_jax.train.folders import writable_folder
from vit_jax.train.parallel import to_host
from vit_jax.train.profiling import StepProfiler
from vit_jax.train.reporting import PendingMetrics, Reporter, format_duration
from vit_jax.train.state import check_params, create_state, init_params
from vit_jax.train.step import make_eval_step, mean_iou, run_train_step
from vit_jax.train.stopping import DivergedError, StopSignals, deadline, writing


def prepare_workdir(workdir: str) -> str:
    """Creates the workdir and checks it can be written; returns its absolute path."""
    if "://" in workdir:
        raise ValueError(
            f"workdir={workdir!r} is a URL; metrics and config files are written with local file "
            "I/O: use a local or mounted path (e.g. a bucket mounted with gcsfuse, or NFS)."
        )
    return writable_folder(workdir, "workdir", "pass a --workdir you can write to")


def evaluate(
    model: VisionTransformer,
    params,
    dataset: data.Dataset,
    *,
    batch_size: int,
    par: parallel.MeshParallel | parallel.PmapParallel | None = None,
    eval_step: Callable | None = None,
) -> dict:
    """Accuracy and mean loss of `model` with `params` over every example of the opened
    `dataset`'s eval split (the last batch padded and masked, nothing dropped), as
    {"accuracy", "loss", "num_examples"}. `batch_size` is global. A per-patch model (on
    per-pixel labels) is scored per patch and adds "miou" (`eval_metrics`).

    `par` (default: jit over every device) places the parameters and batches; `eval_step`, an
    eval step that `par` compiled for parameters already placed (the training loop passes its
    own), skips placing and compiling here. Parameters that do not fit the model exactly (another
    position embedding's table, another size) and a batch that the devices cannot share equally
    raise ValueError first (`check_params`, `parallel.check_batch_size`).

        dataset = data.open_dataset(validate(config).data)
        evaluate(model, params, dataset, batch_size=256)
    """
    par = par or parallel.make("jit")
    parallel.check_batch_size(batch_size)
    if eval_step is None:
        check_params(model, params, dataset.info.channels)
        shardings = par.state_shardings(params)
        params = par.put_state(params)
        eval_step = par.compile_eval(make_eval_step(model, axis_name=par.axis_name), shardings)
    totals = {}
    batches = data.eval_batches(dataset, image_size=model.image_size, global_batch_size=batch_size)
    for batch in batches:
        sums = eval_step(params, par.put_batch(batch))
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + np.asarray(par.metric(v), np.float64)
    return eval_metrics(totals)


def eval_metrics(totals: dict) -> dict:
    """The eval step's sums over a split (`make_eval_step`) -> {"accuracy", "loss",
    "num_examples"}: means over the images, or over their patches where the sums count them
    ("patches"), then with "miou", the mean IoU of their confusion matrix (`mean_iou`)."""
    scored = max(float(totals.get("patches", totals["count"])), 1.0)
    metrics = {
        "accuracy": float(totals["correct"]) / scored,
        "loss": float(totals["loss"]) / scored,
        "num_examples": int(totals["count"]),
    }
    if "confusion" in totals:
        metrics["miou"] = mean_iou(totals["confusion"])
    return metrics


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


def remember_trained_grid(settings: Settings, stored: dict | None = None) -> Settings:
    """`settings` whose model and config have model.posemb_grid set to the grid the position
    embedding was first trained on, when model.posemb_grid is not set: on a resume, the one the
    workdir's checkpoint `stored` (its config) remembers (init_from is not read again: it may be
    gone, or a download); on a first start, the reference grid of the `init_from` checkpoint
    (`vit_jax.checkpoint.with_trained_grid`; its shapes and metadata only) if it is not the
    model's. So the run interpolates or extrapolates its position embedding from that grid, and
    config.json and this run's checkpoints remember it for a later fine-tuning. Otherwise
    `settings` unchanged."""
    model, init_from = settings.model, settings.train.init_from
    if model.posemb_grid is not None:
        return settings
    if stored:  # a resume whose checkpoint says (an unreadable config: as a first start)
        grid = stored.get("model", {}).get("posemb_grid")
    elif init_from:
        from vit_jax.checkpoint import with_trained_grid

        grid = with_trained_grid(model, init_from).posemb_grid
    else:
        grid = None
    if grid is None:
        return settings
    config = settings.config.copy_and_resolve_references()
    with config.unlocked():
        config.model.posemb_grid = tuple(grid)
    config.lock()
    return dataclasses.replace(settings, config=config, model=model.clone(posemb_grid=tuple(grid)))


# Model fields that say how the model is computed, not what it is: a run may resume with other
# values (it moves from CPU to GPU to TPU), as it may on another mesh or parallel strategy.
COMPUTE_FIELDS = ("dtype", "remat_policy", "attention_impl")


def hold_workdir(workdir: str, cleanup: contextlib.ExitStack) -> None:
    """One run per workdir: process 0 holds it (`folders.held`) until `cleanup` closes; if
    another run holds it, every process raises the same ValueError (a job submitted twice
    stops before it touches the first one's files)."""
    error = None
    try:
        cleanup.enter_context(folders.held(workdir, enabled=jax.process_index() == 0))
    except ValueError as e:
        error = e
    held = error is None
    if jax.process_count() > 1:  # process 0 decides for all
        held = bool(multihost_utils.broadcast_one_to_all(np.int32(held)))
    if not held:
        raise error or ValueError(folders.held_message(workdir))


def check_same_run(manager, config_dict: dict, total_steps: int) -> None:
    """Raises ValueError if the workdir's newest checkpoint is of another model (architecture)
    or optimizer, which could not be resumed (use a new workdir, or start from it with
    init_from), or past `total_steps`. COMPUTE_FIELDS, the mesh and the parallel strategy may
    change."""
    step = manager.latest_step()
    if step is None:
        return
    if step > total_steps:
        raise ValueError(
            f"the workdir's newest checkpoint is at step {step}, past total_steps={total_steps}: "
            f"to train it further set --config.total_steps above {step}; to evaluate it, "
            f"vit_jax.train.loop.evaluate (or vit-predict); for a shorter run, a new --workdir."
        )
    stored = ckpt.stored_config(manager, step)
    changed = [
        f"{section}.{key}: {old!r} -> {config_dict[section].get(key)!r}"
        for section in ("model", "optimizer")
        for key, old in stored.get(section, {}).items()
        if config_dict[section].get(key) != old
        and (section == "model" and key not in COMPUTE_FIELDS or key == "name")
    ]
    if changed:
        raise ValueError(
            f"the workdir holds a run (step {step}) of another model or optimizer "
            f"({'; '.join(changed)}), which cannot be resumed: use a new --workdir, or start "
            f"from that run with --config.init_from={manager.directory}."
        )


# Fields that change how a run is carried out, not what it computes: a resume with other
# values is still exact.
OPERATIONAL_FIELDS = {
    "": (
        "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints",
        "checkpoint_timeout_minutes", "checkpoint_every_minutes", "plots", "profile_start_step",
        "profile_num_steps", "compilation_cache_dir", "parallel", "init_from", "nonfinite",
        "eval_batch_size",
    ),
    "model": tuple(f for f in COMPUTE_FIELDS if f != "dtype"),  # dtype changes the numbers
    "data": ("data_dir", "read_threads", "prefetch", "cache", "bad_image"),
    "mesh": None,  # every field
    "sharding": None,
    "init_options": None,
}  # fmt: skip


def resume_changes(manager, config_dict: dict) -> list[str]:
    """The settings of `config_dict` that differ from the newest checkpoint's and change what
    the run computes from here on (the learning-rate schedule of another total_steps, another
    batch, seed or dtype, ...): "total_steps: 20 -> 40". [] without a checkpoint."""
    step = manager.latest_step()
    if step is None:
        return []
    stored = ckpt.stored_config(manager, step)
    sections = [("", stored, config_dict)] + [
        (name, stored.get(name, {}), config_dict.get(name, {}))
        for name in ("model", "data", "optimizer", "mesh", "sharding", "init_options")
    ]
    changes = []
    for name, old, new in sections:
        skip = OPERATIONAL_FIELDS.get(name, ())
        if skip is None:
            continue
        for key, value in old.items():
            if isinstance(value, dict) or key in skip or key == layout.CLASS_NAMES:
                continue
            if new.get(key) != value:
                changes.append(f"{name + '.' if name else ''}{key}: {value!r} -> {new.get(key)!r}")
    return changes


@dataclasses.dataclass(frozen=True)
class Run:
    """What the stages of a run share: its checked settings, the opened dataset, the workdir,
    the parallel strategy, the optimizer and schedule, the checkpoint manager and the config
    as it is stored with each checkpoint."""

    settings: Settings
    dataset: data.Dataset
    workdir: str
    par: parallel.MeshParallel | parallel.PmapParallel
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    manager: ocp.CheckpointManager
    config_dict: dict


def train_and_evaluate(config, workdir: str, dataset: data.Dataset | None = None) -> dict:
    """Trains `config` in `workdir` (resuming if it holds checkpoints) and evaluates it.
    `dataset`: the dataset `config.data` describes, already opened (`data.open_dataset`), for a
    caller that trains many runs on the same data; default: opened here.

    Stages: `set_up` (check the config, open the dataset and the checkpoint manager),
    `initial_state` (restore the newest checkpoint, or initialise / `init_from`), `train_steps`
    (the step loop with logging, evaluations and saves) and `finish` (final evaluation and
    summary). The checkpoint manager, the data iterator and the reporter are closed on every
    exit path, errors included.

    Returns the final summary: {"step", "accuracy", "loss", "num_examples", "train_seconds"
    (of which "compile_seconds", the first step, and "eval_and_save_seconds"), "img_per_sec"}
    (img/s of the steps after the first, evaluations and saves left out), or
    {"step", "preempted": True} if the run stopped for a preemption.
    """
    with contextlib.ExitStack() as cleanup:
        if created := folders.first_missing(workdir):  # a failed start leaves none behind,
            cleanup.push(removing_if_empty_on_error(workdir, created))  # nor parents it made
        # First in, last out: a stop signal during set-up, compilation or the final save
        # is a request the loop (or completion) answers, never an abrupt death.
        signals = cleanup.enter_context(StopSignals())
        run = set_up(config, workdir, dataset, cleanup)  # holds the workdir until the end
        cleanup.callback(close_manager, run)
        state, train_iter, resumed = initial_state(run)
        cleanup.callback(getattr(train_iter, "close", lambda: None))
        start_step = int(to_host(state["step"]))
        reporter = Reporter(run.workdir, run.settings.train.total_steps, start_step)
        cleanup.callback(reporter.close)
        if resumed:
            again = " (init_from is not read again)" if run.settings.train.init_from else ""
            reporter.message(f"resumed from {run.manager.directory} at step {start_step}{again}")
        state, eval_step, timing, stopped = train_steps(run, state, train_iter, reporter, signals)
        if stopped:
            reporter.message(f"preempted at step {stopped}: checkpoint saved; rerun to resume")
            return {"step": stopped, "preempted": True}
        return finish(run, state, eval_step, start_step, timing, reporter)


def remove_if_empty(directory: str) -> None:
    """Removes `directory` if it holds no file, only (nested) empty folders: bottom-up with
    `os.rmdir`, which refuses a folder that holds anything, so a file another process writes
    meanwhile stays. A directory with any file is left whole."""
    directory = os.path.abspath(os.path.expanduser(directory))
    if any(files for _, _, files in os.walk(directory)):
        return
    for folder, _, _ in os.walk(directory, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def removing_if_empty_on_error(directory: str, created: str | None = None) -> Callable:
    """An ExitStack exit callback: when leaving with an error, `remove_if_empty(directory)`,
    then each of its parents up to `created` (the outermost one the caller made) that is
    empty (`os.rmdir`: a sibling's folder keeps its parent)."""

    def on_exit(exc_type, exc, traceback) -> bool:
        if exc_type is not None:
            remove_if_empty(directory)
            folder, top = os.path.abspath(os.path.expanduser(directory)), created
            while top and folder != os.path.abspath(top) and not os.path.exists(folder):
                folder = os.path.dirname(folder)
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
        return False  # the error goes on

    return on_exit


def set_up(
    config,
    workdir: str,
    dataset: data.Dataset | None = None,
    cleanup: contextlib.ExitStack | None = None,
) -> Run:
    """Checks every field, prepares the workdir, opens the dataset (once; or takes `dataset`,
    opened with the same data options) and the checkpoint manager, and refuses a workdir that
    holds a run of another model. With init_from, the model's posemb_grid becomes the
    checkpoint's trained grid (`remember_trained_grid`). With `cleanup`, the
    workdir is held (`hold_workdir`) until it closes."""
    settings = validate(config)  # every field of every section, before anything is read
    if dataset is not None and dataset.options != settings.data:
        raise ValueError(
            "the dataset given to train_and_evaluate was opened with other data options than "
            "config.data: open it with data.open_dataset(validate(config).data)."
        )
    parallel.use_compilation_cache(settings.train.compilation_cache_dir)
    workdir = prepare_workdir(workdir)
    if cleanup is not None:  # before anything opens the checkpoints (Orbax tidies on opening)
        hold_workdir(workdir, cleanup)
    if dataset is None:
        dataset = data.open_dataset(settings.data)  # opened once: every loader and eval uses it
    settings = with_dataset(settings, dataset.info)
    stored = ckpt.newest_stored_config(workdir)  # None: nothing to resume
    settings = remember_trained_grid(settings, stored)
    train = settings.train
    tx, schedule = optim.make_optimizer(settings.optimizer, train.total_steps)
    config_dict = json.loads(settings.config.to_json_best_effort())
    config_dict[layout.CLASS_NAMES] = list(dataset.info.class_names)  # for vit_jax.predict
    par = parallel.make(train.parallel, mesh=settings.mesh, options=settings.sharding)
    # The sharding overrides are checked against the parameters before anything is written.
    par.state_shardings(cost.abstract_train_state(settings.model, tx, dataset.info.channels))
    manager = ckpt.open_manager(
        workdir,
        keep=train.keep_checkpoints,
        save_every=train.checkpoint_every_steps,
        save_every_minutes=train.checkpoint_every_minutes,
    )
    try:
        check_same_run(manager, config_dict, train.total_steps)
    except ValueError:
        manager.close()
        raise
    return Run(settings, dataset, workdir, par, tx, schedule, manager, config_dict)


def initial_state(run: Run):
    """The train state on the devices, the training iterator at its position, and whether the
    state was restored: the newest checkpoint's, else fresh (or `init_from`) parameters; the
    resolved config is written to WORKDIR/config.json."""
    settings, model, channels = run.settings, run.settings.model, run.dataset.info.channels
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(settings.train.seed))
    abstract = cost.abstract_train_state(model, run.tx, channels, train_rng)
    shardings = run.par.state_shardings(abstract)
    state = None
    if run.manager.latest_step() is None:  # init_from is read and checked before any data loads
        params = initial_params(settings, init_rng, channels, shardings["params"])
        state = jax.jit(lambda p, r: create_state(p, run.tx, r), out_shardings=shardings)(
            params, train_rng
        )
    if jax.process_index() == 0:
        with open(os.path.join(run.workdir, "config.json"), "w") as f:
            json.dump(run.config_dict, f, indent=2)
    provenance.record(run.workdir)
    resumed = state is None
    if resumed:
        placed = jax.tree.map(
            lambda s, where: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=where),
            abstract,
            shardings,
        )
        state = ckpt.restore_latest(run.manager, placed, report=warn)
    train_iter = iter(
        data.train_loader(
            run.dataset,
            image_size=model.image_size,
            global_batch_size=settings.train.batch_size,
            seed=settings.train.seed,
            start_step=int(to_host(state["step"])),
        )
    )
    return state, train_iter, resumed


def warn(text: str) -> None:
    """Something the run goes on after (a damaged checkpoint moved aside): one line on stderr,
    `warning: ...`, from process 0 (every process would say the same)."""
    if jax.process_index() == 0:
        print(f"warning: {text}", file=sys.stderr, flush=True)


def train_steps(run: Run, state, train_iter, reporter: Reporter, signals: StopSignals):
    """Runs the steps from the state's step to total_steps, logging every log_every_steps,
    evaluating every eval_every_steps and saving as the manager decides (and at the end), until
    a stop is requested (`stopping.stop_requested`: then it saves at once). Raises
    DivergedError at a non-finite step (nonfinite='stop') or state; a checkpoint only ever
    holds a finite state. Returns (state, the compiled eval step, (training seconds, of which
    compiling the first step, of which evaluating and saving), the step the run stopped at, or
    0 if it completed)."""
    par, train = run.par, run.settings.train
    start_step = int(to_host(state["step"]))
    reporter.message(describe(run, state, start_step))
    note = optim.warmup_note(run.settings.optimizer, train.total_steps)
    if note and start_step == 0:  # once, at the start of the run
        reporter.message(note)
    changes = resume_changes(run.manager, run.config_dict) if start_step else []
    if changes:
        schedule = any(c.startswith(("total_steps:", "num_epochs:")) for c in changes)
        reporter.message(
            f"resumed with other settings than checkpoint {start_step}'s: {'; '.join(changes)}. "
            "From here on the run follows them"
            + (" (the learning-rate schedule of the new length)" if schedule else "")
            + ", so it is no longer the run an uninterrupted one would be."
        )
    train_step, eval_step = compile_steps(run, state)
    state = par.put_state(state)
    speed = Throughput.of(run)
    reporter.message(speed.describe())
    pending = PendingMetrics(par.metric, start_step, train.batch_size)
    profiler = StepProfiler(
        run.workdir, train.profile_start_step, train.profile_num_steps, train.total_steps
    )
    if profile_note := profiler.plan(start_step):
        reporter.message(profile_note)
    train_start, compiling, metrics = time.perf_counter(), 0.0, None
    try:
        for step in range(start_step, train.total_steps):
            profiler.before(step)
            fetch_start = time.perf_counter()
            batch = par.put_batch(next(train_iter))
            pending.waited(time.perf_counter() - fetch_start, previous=metrics)
            state, metrics = train_step(state, batch)
            pending.add(metrics)
            done = step + 1
            if step == start_step:  # compiled on its first call: time it apart from throughput
                jax.block_until_ready(metrics)
                speed.compile_seconds = compiling = time.perf_counter() - train_start
                reporter.message(f"first step (compilation included): {compiling:.1f}s")
                pending.restart_clock(done)
            message = profiler.after(done, (state, metrics))
            if message:
                reporter.message(message)
            if done % train.log_every_steps == 0 or done == train.total_steps:
                means, img_per_sec = pending.flush(done, stop=train.nonfinite == "stop")
                reporter.train(done, {**means, **speed.fields(img_per_sec)}, img_per_sec)
            if train.eval_every_steps and done % train.eval_every_steps == 0:
                if done < train.total_steps:
                    with pending.aside(state):  # not training time
                        reporter.eval(done, "eval", **evaluate_run(run, eval_step, state))
            stop = stopping.stop_requested(run.manager, done, signals)
            if done == train.total_steps or run.manager.should_save(done) or stop:
                with pending.aside(state):
                    pending.check(stop=train.nonfinite == "stop")
                    if not bool(to_host(stopping.all_finite(state))):
                        raise DivergedError(
                            f"the state after step {done} is not finite; not saved."
                        )
                    with saving(run):
                        ckpt.save(
                            run.manager, done, par.host_state(state), run.config_dict, force=True
                        )
            if stop:
                with saving(run):
                    run.manager.wait_until_finished()
                timing = (time.perf_counter() - train_start, compiling, pending.aside_seconds)
                return state, eval_step, timing, done
    finally:  # on an error, the error is the message
        if (profile_note := profiler.close()) and sys.exc_info()[0] is None:
            reporter.message(profile_note)
    timing = (time.perf_counter() - train_start, compiling, pending.aside_seconds)
    return state, eval_step, timing, 0


@dataclasses.dataclass
class Throughput:
    """What the training log adds to img/s: MFU (model FLOPs of a step, `cost.train_flops`,
    over the devices' peak, `cost.peak_flops`) and, once, the first step's compile time."""

    flops_per_image: float
    devices: int
    peak: cost.Peak
    compile_seconds: float | None = None

    @classmethod
    def of(cls, run: Run) -> Throughput:
        flops = cost.train_flops(run.settings.model, 1, run.dataset.info.channels)
        return cls(flops, cost.peak_holders(), cost.peak_flops())

    def describe(self) -> str:
        return (
            f"{self.flops_per_image / 1e9:,.2f} GFLOPs per training image; MFU against the "
            f"{self.peak.source} ({self.peak.flops / 1e12:,.3f} TFLOP/s per {cost.peak_holder()})"
        )

    def fields(self, img_per_sec: float | None) -> dict[str, float]:
        """{"mfu"} (if img_per_sec is known) and, in the first record after the first step,
        {"compile_seconds"}."""
        fields = {}
        if img_per_sec is not None:
            per_device = img_per_sec * self.flops_per_image / self.devices
            fields["mfu"] = cost.mfu(per_device, self.peak.flops)
        if self.compile_seconds is not None:
            fields["compile_seconds"], self.compile_seconds = self.compile_seconds, None
        return fields


def compile_steps(run: Run, state):
    """The train and eval steps compiled for the run's strategy and the state's placement."""
    settings, par, train = run.settings, run.par, run.settings.train
    shardings = par.state_shardings(state)
    train_step = par.compile_train(
        run_train_step(settings.model, train, run.tx, run.schedule, axis_name=par.axis_name),
        shardings,
    )
    eval_step = par.compile_eval(
        make_eval_step(settings.model, axis_name=par.axis_name), shardings["params"]
    )
    return train_step, eval_step


@contextlib.contextmanager
def saving(run: Run):
    """Around checkpoint writes and waits: a save that cannot be written (disk full,
    permissions) becomes one WorkdirWriteError naming the directory, and one that hangs ends
    the run after checkpoint_timeout_minutes."""
    minutes = run.settings.train.checkpoint_timeout_minutes
    with deadline(60 * minutes, f"the checkpoint save in {run.manager.directory}"):
        with writing(str(run.manager.directory)):
            yield


def close_manager(run: Run) -> None:
    """Waits for the save in progress and closes the checkpoint manager (see `saving`)."""
    with saving(run):
        run.manager.close()


def describe(run: Run, state, start_step: int) -> str:
    """The line that opens a run: model, data, batch, devices and steps (`state` as restored
    or initialised, before it is put on the devices)."""
    settings, info, train = run.settings, run.dataset.info, run.settings.train
    n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    return (
        f"{settings.model.variant} ({n_params:,} parameters) on {settings.data.title}: "
        f"{info.num_train} train / {info.num_eval} eval images, batch {train.batch_size} over "
        f"{jax.device_count()} device{'s' * (jax.device_count() > 1)} ({train.parallel}), "
        f"steps {start_step}->{train.total_steps}"
    )


def evaluate_run(run: Run, eval_step: Callable, state) -> dict:
    """`evaluate` of the run's model on its eval split, with the state's parameters."""
    return evaluate(
        run.settings.model,
        state["params"],
        run.dataset,
        batch_size=run.settings.train.eval_batch_size,
        par=run.par,
        eval_step=eval_step,
    )


def finish(
    run: Run,
    state,
    eval_step: Callable,
    start_step: int,
    timing: tuple[float, float, float],
    reporter: Reporter,
) -> dict:
    """Evaluates the final state, waits for the last save and reports the summary: the
    training time, and img/s of the steps after the first (which compiles), evaluations and
    saves left out, as in the progress lines."""
    result = evaluate_run(run, eval_step, state)
    final_step = int(run.par.metric(state["step"]))
    reporter.eval(final_step, "eval", **result)
    with saving(run):
        run.manager.wait_until_finished()
    steps_run = final_step - start_step
    train_seconds, compile_seconds, aside_seconds = timing
    after = train_seconds - compile_seconds - aside_seconds
    images = max(steps_run - 1, 0) * run.settings.train.batch_size
    summary = {
        "step": final_step,
        **result,
        "train_seconds": train_seconds,
        "compile_seconds": compile_seconds,
        "eval_and_save_seconds": aside_seconds,
        "img_per_sec": images / after if images and after > 0 else 0.0,
    }
    if steps_run == 0:
        trained = "nothing left to train (the checkpoint was at total_steps)"
    elif steps_run == 1:
        trained = f"1 step in {format_duration(train_seconds)} (compiling included)"
    else:
        trained = (
            f"{steps_run} steps in {format_duration(train_seconds)} (the first, compiling: "
            f"{compile_seconds:.1f}s; then {summary['img_per_sec']:,.0f} img/s)"
        )
    reporter.message(
        f"done: step {final_step}, eval accuracy {result['accuracy']:.4f} on "
        f"{result['num_examples']} examples, {trained}"
    )
    write_plots(run, state, reporter)
    return summary


def write_plots(run: Run, state, reporter: Reporter) -> None:
    """Draws the run's training curves and position embedding into WORKDIR/plots
    (`vit_jax.viz.write_run_plots`, process 0) unless `plots=False`. A picture never fails a
    run: without matplotlib, or on any error, one line says why there is none."""
    if not run.settings.train.plots:
        return
    try:
        params = position_params_on_host(run.par, state["params"])
        if jax.process_index() != 0:
            return
        from vit_jax import viz

        written = viz.write_run_plots(run.workdir, run.settings.model, params)
    except ImportError as e:
        reporter.message(f"plots: skipped: {e}")
    except Exception as e:  # a plot is never worth a failed run
        reporter.message(f"plots: not drawn ({type(e).__name__}: {e})")
    else:
        reporter.message(f"plots: {', '.join(os.path.relpath(p, run.workdir) for p in written)}")


def position_params_on_host(par, params) -> dict:
    """The parameters that a position-embedding variant owns (`posemb.param_rule`), as numpy
    arrays in a tree shaped like `params` (the pictures need nothing else)."""
    flat = paths.flatten(params)
    owned = {key: value for key, value in flat.items() if param_rule(paths.leaf(key))}
    return jax.tree.map(host_array, par.host_state(paths.unflatten(owned)))


def host_array(x: jax.Array | np.ndarray) -> np.ndarray:
    """A parameter as numpy: whole if this process holds all of it, else its replica."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    if x.is_fully_replicated:
        return to_host(x)
    raise ValueError("a position parameter is sharded over processes; it is not gathered")
