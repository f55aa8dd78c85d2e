"""The position-embedding study: four claims about position embeddings, measured with seeds.

    python -m vit_jax.experiments.posemb_study --out DIR [--quick]

The claims (from the lecture notes this codebase grew from):
  1. without position embeddings the model is permutation-invariant and loses geometry;
  2. fixed sin/cos is more stable on small data (less overfitting), learned wins with more data;
  3. relative position bias helps local tasks (segmentation);
  4. RoPE and relative embeddings extrapolate better to new resolutions.

Tasks, each run for several variants and seeds with the real training loop
(`train_and_evaluate`), restore (`restore_into`) and evaluation (`evaluate`):
  resolution    classify the images (default: the embedded digits at 16 px, a 4x4 patch grid);
                evaluate at smaller and larger sizes without training, in each of the variant's
                modes (interpolate / extrapolate: `posemb_mode`), then fine-tune briefly at the
                largest size. Every variant runs it.                                 (claim 4)
  position      `digits_position`: which digit, and in which half of a 16x16 canvas it lies:
                position matters by construction. Evaluated as the resolution task (other
                sizes in each mode, a short fine-tune at the largest), and with the test
                images' patches shuffled (one fixed permutation), which `none` cannot tell
                apart.                                                                 (claim 1)
  segmentation  `digits_segmentation`: the digit class (or background) of every patch, with
                the `unpooled` classifier; per-patch accuracy and mIoU.                (claim 3)
  data_size     the resolution task trained on the first n training images, for several n:
                test accuracy, train accuracy (no augmentation) and their gap (tfds data
                only: the subsets are split slices, "train[:500]").                   (claim 2)

Writes DIR/results.json (one record per task, variant, setting and seed, saved as each run
finishes: an interrupted study, rerun with the same arguments, runs only what is missing),
DIR/summary.md (tables and verdicts) and DIR/*.png (posemb_report.py), and each training run's
workdir under DIR/runs/. `--dataset cifar10` (or `--train-dir` for an image folder) runs the
resolution and data-size tasks on that data instead of the digits.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time

import jax
import ml_collections
import numpy as np

from vit_jax import checkpoint, data
from vit_jax.data import canvas
from vit_jax.data.digits import NAME as DIGITS
from vit_jax.tools import ArgumentParser
from vit_jax.train import command_line, parallel
from vit_jax.train.config import validate, with_dataset
from vit_jax.train.folders import first_missing
from vit_jax.train.loop import evaluate, removing_if_empty_on_error, train_and_evaluate
from vit_jax.train.step import make_eval_step
from vit_jax.train.stopping import WorkdirWriteError, caused_by_user, user_error, write_error

# Variant label -> model fields. Labels name what the tables and plots show.
VARIANTS: dict[str, dict] = {
    "none": {"posemb": "none"},
    "learned": {"posemb": "learned"},
    "sincos1d": {"posemb": "sincos1d"},
    "sincos2d": {"posemb": "sincos2d"},
    "factorized": {"posemb": "factorized", "posemb_factorized": "concat"},
    "factorized-sum": {"posemb": "factorized", "posemb_factorized": "sum"},
    "relative": {"posemb": "relative"},
    "rope_axial": {"posemb": "rope_axial"},
    "rope_mixed": {"posemb": "rope_mixed"},
    "learned+rope_axial": {"posemb": "learned+rope_axial"},
}
# Variants whose positions are coordinates (or offsets) that can be extrapolated; the others
# (tables) can only be resized, and `none` has nothing to adapt.
BOTH_MODES = ("sincos1d", "sincos2d", "relative", "rope_axial", "rope_mixed", "learned+rope_axial")
INTERPOLATE, EXTRAPOLATE = "interpolate", "extrapolate"
FINETUNE_MODE = INTERPOLATE  # fixed before the run: every variant is fine-tuned interpolating

TASKS = ("resolution", "position", "segmentation", "data_size")


def modes(variant: str) -> tuple[str, ...]:
    """The posemb_mode values worth evaluating for `variant` at a new grid."""
    if variant == "none":
        return ("auto",)
    return (INTERPOLATE, EXTRAPOLATE) if variant in BOTH_MODES else (INTERPOLATE,)


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of the study: its data, head and the settings it is measured in.

    data: overrides of the data config. image_size: training size (pixels, square).
    eval_sizes: sizes evaluated without training (the training size is always evaluated).
    finetune_size: size of the short fine-tune (None: no fine-tune). train_sizes: training-set
    sizes (None: the whole split). shuffled: also evaluate with shuffled patches.
    finetune_variants: the variants fine-tuned (None: all).
    """

    name: str
    variants: tuple[str, ...]
    data: dict
    image_size: int
    eval_sizes: tuple[int, ...] = ()
    finetune_size: int | None = None
    classifier: str = "token"
    train_sizes: tuple[int | None, ...] = (None,)
    shuffled: bool = False
    finetune_variants: tuple[str, ...] | None = None  # None: every variant

    def finetunes(self, variant: str) -> bool:
        return self.finetune_size is not None and (
            self.finetune_variants is None or variant in self.finetune_variants
        )


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much each run trains: seeds, steps, batch and the model's size."""

    seeds: int
    steps: int
    finetune_steps: int
    batch_size: int
    model: dict  # overrides of the digits config's model section

    @property
    def seed_list(self) -> range:
        return range(self.seeds)


FULL = Budget(seeds=3, steps=400, finetune_steps=50, batch_size=128, model={})
QUICK = Budget(
    seeds=1,
    steps=12,
    finetune_steps=4,
    batch_size=32,
    model={"hidden_size": 32, "num_layers": 1, "num_heads": 2, "mlp_dim": 64},
)


def plan(args: argparse.Namespace) -> list[Task]:
    """The tasks to run, from the command line. Which variants run which task is fixed here, to
    fit the full study in two hours on 2 CPU cores; every variant runs the resolution task.
    --quick keeps every task and setting but evaluates fewer sizes, fine-tunes one variant and
    runs the other tasks with the two variants their claims compare."""
    main_data = _main_data(args)
    digits = main_data.get("name") == DIGITS
    size = args.image_size or (16 if digits else 32)
    smaller, larger, largest = (max(4, round(size * f / 4) * 4) for f in (0.75, 1.5, 2.0))
    train_sizes = args.train_sizes or ((150, 500, None) if digits else (1000, 5000, None))
    canvas_sizes = (12, 24, 32)
    position = {"name": canvas.NAME_POSITION, "augment": "resize"}
    segmentation = {"name": canvas.NAME_SEGMENTATION, "augment": "resize"}
    if args.quick:
        tasks = [
            Task(
                "resolution",
                tuple(VARIANTS),
                main_data,
                size,
                (smaller, largest),
                largest,
                finetune_variants=("sincos2d",),
            ),
            Task("position", ("none", "learned"), position, 16, shuffled=True),
            Task("segmentation", ("learned", "relative"), segmentation, 16, classifier="unpooled"),
            Task(
                "data_size",
                ("learned", "sincos2d"),
                main_data,
                size,
                train_sizes=(train_sizes[0], None),
            ),
        ]
    else:
        tasks = [
            Task(
                "resolution", tuple(VARIANTS), main_data, size, (smaller, larger, largest), largest
            ),
            Task(
                "position",
                ("none", "learned", "sincos2d", "relative", "rope_axial"),
                position,
                16,
                canvas_sizes,
                canvas_sizes[-1],
                shuffled=True,
            ),
            Task(
                "segmentation",
                ("none", "learned", "sincos2d", "relative", "rope_axial", "learned+rope_axial"),
                segmentation,
                16,
                canvas_sizes,
                classifier="unpooled",
            ),
            Task(
                "data_size",
                ("learned", "sincos2d"),
                main_data,
                size,
                train_sizes=tuple(train_sizes),
            ),
        ]
    if args.train_dir:  # subsets are tfds split slices ("train[:500]"): none for a folder
        tasks = [t for t in tasks if t.name != "data_size"]
    chosen = args.tasks.split(",") if args.tasks else TASKS
    wanted = args.variants.split(",") if args.variants else None
    out = []
    for task in tasks:
        if task.name not in chosen:
            continue
        variants = tuple(v for v in task.variants if wanted is None or v in wanted)
        if variants:
            out.append(dataclasses.replace(task, variants=variants))
    return out


def _main_data(args: argparse.Namespace) -> dict:
    """Data overrides of the resolution and data-size tasks."""
    if args.train_dir:
        return {"source": "folder", "train_dir": args.train_dir}
    return {"name": args.dataset}


# --------------------------------------------------------------------------------------------
# Configs of the runs.


def train_config(
    task: Task, variant: str, seed: int, budget: Budget, train_size: int | None, data_dir
) -> ml_collections.ConfigDict:
    """The config of one training run: the packaged digits config with the task's data and
    head, the variant's position embedding, the seed and the budget."""
    config = command_line.load("digits")
    with config.unlocked():
        config.seed = seed
        config.total_steps = budget.steps
        config.batch_size = budget.batch_size
        config.log_every_steps = max(1, budget.steps // 5)
        config.checkpoint_every_steps = budget.steps
        config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, budget.steps // 5)
        config.plots = False
        for key, value in {**budget.model, **VARIANTS[variant]}.items():
            config.model[key] = value
        config.model.image_size = (task.image_size, task.image_size)
        config.model.classifier = task.classifier
        config.model.num_classes = None  # the dataset's
        for key, value in task.data.items():
            config.data[key] = value
        if data_dir:
            config.data.data_dir = data_dir
        if train_size is not None:
            config.data.train_split = f"{config.data.train_split}[:{train_size}]"
    return config


def finetune_config(config: ml_collections.ConfigDict, size: int, init_from: str, steps: int):
    """A short fine-tune of `config`'s run at `size` pixels from its checkpoint: SGD with
    momentum, no regularisation (the official ViT fine-tuning recipe, as configs/
    digits_finetune.py), position embeddings adapted in FINETUNE_MODE."""
    config = config.copy_and_resolve_references()
    config.model.image_size = (size, size)
    config.model.posemb_mode = FINETUNE_MODE
    config.model.stochastic_depth = 0.0
    config.init_from = init_from
    config.total_steps = steps
    config.checkpoint_every_steps = steps
    config.log_every_steps = max(1, steps // 2)
    config.label_smoothing = 0.0
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.01
    config.optimizer.weight_decay = 0.0
    config.optimizer.warmup_steps = min(20, steps // 5)
    return config


# --------------------------------------------------------------------------------------------
# Evaluation beyond the training loop's.


def shuffle_patches(images: jax.Array, patch_size: tuple[int, int], order: np.ndarray):
    """images [B, H, W, C] with their (ph, pw) patches moved: patch k of the result is patch
    order[k] of the input (row-major grid order)."""
    b, height, width, c = images.shape
    (ph, pw) = patch_size
    h, w = height // ph, width // pw
    patches = images.reshape(b, h, ph, w, pw, c).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(b, h * w, ph, pw, c)[:, order]
    return patches.reshape(b, h, w, ph, pw, c).transpose(0, 1, 3, 2, 4, 5).reshape(images.shape)


def evaluate_shuffled(model, params, dataset: data.Dataset, batch_size: int, seed: int) -> dict:
    """`evaluate` on test images whose patches are shuffled by one fixed permutation."""
    h, w = model.grid
    order = np.random.default_rng(seed).permutation(h * w)
    step = make_eval_step(model)
    shuffled = jax.jit(
        lambda p, b: step(p, {**b, "image": shuffle_patches(b["image"], model.patch_size, order)})
    )
    par = parallel.make("jit")
    return evaluate(
        model, par.put_state(params), dataset, batch_size=batch_size, par=par, eval_step=shuffled
    )


def restored(model, workdir: str, stored: tuple[dict, dict], size: int, mode: str):
    """(model, params): the run in `workdir`, whose parameters and metadata `stored` holds
    (`load_params`), adapted without training as `restore_into` does (`adapt_params`) to
    `model` rebuilt for `size` pixels with posemb_mode `mode`, its coordinates referring to the
    trained grid (`with_trained_grid`)."""
    model = model.clone(image_size=(size, size), posemb_mode=mode)
    model = checkpoint.with_trained_grid(model, workdir)
    params, meta = stored
    params, _ = checkpoint.adapt_params(params, model, jax.random.key(0), meta=meta)
    return model, params


# --------------------------------------------------------------------------------------------
# The study: runs, records, resumption.


@dataclasses.dataclass
class Results:
    """DIR/results.json: the records so far, saved (atomically) after every addition."""

    path: str
    records: list[dict]

    @classmethod
    def open(cls, path: str) -> Results:
        if os.path.exists(path):
            with open(path) as f:
                return cls(path, json.load(f))
        return cls(path, [])

    def has(self, **key) -> bool:
        return any(all(r.get(k) == v for k, v in key.items()) for r in self.records)

    def add(self, record: dict) -> None:
        for key, value in record.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"a study record has a non-finite {key}: {record}")
        self.records.append(record)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.records, f, indent=1)
        os.replace(tmp, self.path)


def run_key(task: Task, variant: str, seed: int, train_size: int | None) -> str:
    """The workdir name of a training run; tasks that train the same run share it (the data-size
    task on the whole split reuses the resolution task's runs)."""
    data_name = task.data.get("name", "folder").replace("/", "_")
    size = "all" if train_size is None else f"n{train_size}"
    return os.path.join(data_name, f"{task.image_size}px", variant, size, f"seed{seed}")


class Study:
    """Runs the planned tasks, skipping what results.json already holds."""

    def __init__(self, tasks: list[Task], budget: Budget, out: str, data_dir: str | None):
        self.tasks, self.budget, self.out, self.data_dir = tasks, budget, out, data_dir
        self.results = Results.open(os.path.join(out, "results.json"))
        self.datasets: dict[str, data.Dataset] = {}
        self.started = time.perf_counter()
        self.units_done = 0.0
        self.units_total = sum(self._units(t) for t in tasks)

    def _units(self, task: Task) -> float:
        """Work of a task in training-step units (for the ETA)."""
        per_seed = sum(self._run_units(task, v) for v in task.variants)
        return per_seed * self.budget.seeds * len(task.train_sizes)

    def _run_units(self, task: Task, variant: str) -> float:
        """Work of one run: its steps, plus its fine-tune's (a step at twice the size costs
        about four)."""
        return self.budget.steps + (
            4 * self.budget.finetune_steps if task.finetunes(variant) else 0
        )

    def run(self) -> None:
        for task in self.tasks:
            for seed in self.budget.seed_list:
                for variant in task.variants:
                    for train_size in task.train_sizes:
                        self._run_one(task, variant, seed, train_size)

    def _progress(self, what: str, units: float, result: str) -> None:
        self.units_done += units
        elapsed = time.perf_counter() - self.started
        left = self.units_total - self.units_done
        eta = elapsed / self.units_done * left if self.units_done else float("nan")
        print(
            f"[study {100 * self.units_done / self.units_total:3.0f}%] {what}: {result} "
            f"(elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min)",
            flush=True,
        )

    def _dataset(self, settings) -> data.Dataset:
        key = json.dumps(dataclasses.asdict(settings.data), sort_keys=True)
        if key not in self.datasets:
            self.datasets[key] = data.open_dataset(settings.data)
        return self.datasets[key]

    def _run_one(self, task: Task, variant: str, seed: int, train_size: int | None) -> None:
        base = {"task": task.name, "variant": variant, "seed": seed, "train_size": train_size}
        what = f"{task.name} {variant} seed {seed}" + (f" n={train_size}" if train_size else "")
        units = self._run_units(task, variant)
        start = time.perf_counter()
        config = train_config(task, variant, seed, self.budget, train_size, self.data_dir)
        workdir = os.path.join(self.out, "runs", run_key(task, variant, seed, train_size))
        settings = validate(config)
        if self.results.has(**base, setting="done"):
            # A study that adds a fine-tune to a task finishes its earlier runs with it.
            if task.finetunes(variant) and not self.results.has(**base, setting="fine-tuned"):
                self.results.add(self._finetune(task, base, config, workdir, settings))
            self._progress(what, units, "done before")
            return
        dataset = self._dataset(settings)
        summary = train_and_evaluate(config, workdir, dataset)
        model = with_dataset(settings, dataset.info).model
        batch = settings.train.eval_batch_size
        records = [self._record(base, "trained", task.image_size, None, summary)]
        if task.name == "data_size":
            on_train = dataclasses.replace(dataset, eval=dataset.train)
            train_acc = evaluate(
                model, _params(model, workdir, dataset), on_train, batch_size=batch
            )
            records[0]["train_accuracy"] = train_acc["accuracy"]
            records[0]["num_train"] = dataset.info.num_train
        stored = checkpoint.load_params(workdir)
        for size in task.eval_sizes:
            for mode in modes(variant):
                new_model, params = restored(model, workdir, stored, size, mode)
                result = evaluate(new_model, params, dataset, batch_size=batch)
                records.append(self._record(base, "resized", size, mode, result))
        if task.shuffled:
            result = evaluate_shuffled(
                model, _params(model, workdir, dataset), dataset, batch, seed
            )
            records.append(self._record(base, "shuffled", task.image_size, None, result))
        if task.finetunes(variant):
            records.append(self._finetune(task, base, config, workdir, settings))
        seconds = time.perf_counter() - start
        for record in records:
            self.results.add(record)
        self.results.add({**base, "setting": "done", "seconds": seconds})
        self._progress(what, units, f"{100 * summary['accuracy']:.1f}% ({seconds:.0f} s)")

    def _finetune(self, task: Task, base: dict, config, workdir: str, settings) -> dict:
        """The record of the short fine-tune of the run in `workdir` at the task's largest size."""
        size = task.finetune_size
        tuned = finetune_config(config, size, workdir, self.budget.finetune_steps)
        dataset = self._dataset(settings)
        result = train_and_evaluate(tuned, f"{workdir}-finetune{size}", dataset)
        return self._record(base, "fine-tuned", size, FINETUNE_MODE, result)

    @staticmethod
    def _record(base: dict, setting: str, size: int, mode: str | None, result: dict) -> dict:
        record = {**base, "setting": setting, "image_size": size, "mode": mode}
        record["accuracy"] = float(result["accuracy"])
        if "miou" in result:
            record["miou"] = float(result["miou"])
        return record


def _params(model, workdir: str, dataset: data.Dataset) -> dict:
    """The trained parameters of the run in `workdir` (same model: nothing is adapted)."""
    params, _ = checkpoint.restore_into(
        workdir, model, jax.random.key(0), channels=dataset.info.channels, verbose=False
    )
    return params


# --------------------------------------------------------------------------------------------
# Command line.


def whole_numbers(text: str) -> tuple[int, ...]:
    """--train-sizes: "100,400" -> (100, 400)."""
    try:
        return tuple(int(n) for n in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not whole numbers, e.g. 100,400") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m vit_jax.experiments.posemb_study",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="folder of results.json, summary.md, *.png")
    parser.add_argument("--quick", action="store_true", help="1 seed, a few steps, tiny model")
    parser.add_argument("--tasks", help=f"comma-separated subset of {','.join(TASKS)}")
    parser.add_argument("--variants", help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--seeds", type=int, help="seeds per setting (default 3; --quick 1)")
    parser.add_argument("--steps", type=int, help="training steps per run")
    parser.add_argument("--dataset", default=DIGITS, help="tfds dataset of the resolution task")
    parser.add_argument("--train-dir", help="an image folder (root/<class>/*.jpg) instead")
    parser.add_argument("--data-dir", help="tfds data directory")
    parser.add_argument("--image-size", type=int, help="training size (default 16 digits, 32)")
    parser.add_argument(
        "--train-sizes",
        type=whole_numbers,
        help="training-set sizes of the data_size task (default 150,500 and all digits)",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="redraw summary.md and plots from results.json"
    )
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Raises ValueError for a task or variant name that does not exist, before any run."""
    from vit_jax.options import unknown_choice

    for names, known in ((args.tasks, TASKS), (args.variants, tuple(VARIANTS))):
        for name in (names or "").split(","):
            if name and name not in known:
                raise unknown_choice("name", name, known)
    for name in ("seeds", "steps", "image_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')}={value} must be at least 1.")


def budget_of(args: argparse.Namespace) -> Budget:
    budget = QUICK if args.quick else FULL
    if args.seeds:
        budget = dataclasses.replace(budget, seeds=args.seeds)
    if args.steps:
        budget = dataclasses.replace(budget, steps=args.steps)
    return budget


QUICK_XLA_FLAG = "--xla_backend_optimization_level=0"


def compile_fast_for_quick() -> None:
    """A quick run's numbers mean nothing and most of its time is XLA compiling some fifty tiny
    programs: compile them without LLVM optimisation (2 min 36 s -> 1 min 41 s on 2 cores),
    unless XLA_FLAGS already sets the level. Takes effect only before JAX starts its backend
    (from the command line, not inside a process that has computed already)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {QUICK_XLA_FLAG}".strip()


def main(argv: list[str] | None = None) -> int:
    from vit_jax.experiments import posemb_report

    args = parse_args(argv)
    if args.quick:
        compile_fast_for_quick()
    out = os.path.abspath(args.out)
    try:
        with contextlib.ExitStack() as cleanup:
            if created := first_missing(out):  # a study that fails leaves no empty --out
                cleanup.push(removing_if_empty_on_error(out, created))
            check_args(args)
            os.makedirs(out, exist_ok=True)
            budget = budget_of(args)
            if not args.report_only:
                Study(plan(args), budget, out, args.data_dir).run()
            written = posemb_report.write(out, quick=args.quick)
    except WorkdirWriteError as error:  # a full disk under --out: one line, status 4
        return write_error(error)
    except (ValueError, FileNotFoundError) as error:
        if not caused_by_user(error):
            raise  # a fault inside a library: its traceback
        return user_error(error)
    print("wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
