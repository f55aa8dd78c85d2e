"""The training config: its sections declared once, its defaults, and its one validation pass.

A config (an `ml_collections.ConfigDict`) has top-level training fields (`TrainOptions`, here) and
six sections, each declared next to the code that consumes it:

    model         VisionTransformer fields (vit_jax/models/vit.py), checked by `models.build`
    data          `DataOptions` (vit_jax/data/options.py)
    optimizer     `OptimizerOptions` (vit_jax/train/optim.py)
    init_options  `RestoreOptions` (here): how `init_from` weights are adapted to the model
    mesh          `MeshOptions` (vit_jax/train/sharding.py): the (data, fsdp) device mesh
    sharding      `ShardingOptions` (same file): the FSDP size threshold and per-path overrides

Each configs/<experiment>.py starts from `base_config()` (every field at its declared default)
and changes what its experiment needs; every field can be overridden on the command line, e.g.
--config.model.posemb=rope_axial --config.batch_size=256. `validate(config)` checks every field
of every section once, before anything expensive; `with_dataset` then fills what the opened
dataset decides.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
from ml_collections import config_dict

from vit_jax import models, options
from vit_jax.checkpoint import published
from vit_jax.data.options import DataOptions, data_options
from vit_jax.data.pipeline import DatasetInfo
from vit_jax.models import zoo
from vit_jax.models.resize import DEFAULT_ANTIALIAS, DEFAULT_METHOD, RESIZE_METHODS
from vit_jax.models.vit import VisionTransformer, as_pair
from vit_jax.options import check, did_you_mean, from_text, option, read, to_config
from vit_jax.train import parallel, sharding
from vit_jax.train.optim import OptimizerOptions
from vit_jax.train.sharding import MeshOptions, ShardingOptions

# Size fields come from the variant string ("B/16"); a value set here overrides it.
SIZE_FIELDS = ("hidden_size", "num_layers", "num_heads", "mlp_dim")


def model_config(
    variant: str, image_size: int | tuple[int, int], **overrides
) -> ml_collections.ConfigDict:
    """Every VisionTransformer field at its declared default (vit_jax/models/vit.py), so each
    one can be set from the CLI. The sizes are None (the variant's) unless set; num_classes is
    None (the dataset's) unless set; the patch comes from the variant string. timm's names are
    read as ours (`timm_to_ours`): a timm model name sets the variant and the image size."""
    fields = timm_to_ours({"image_size": image_size, "variant": variant, **overrides})
    cfg = to_config(VisionTransformer)  # required fields (sizes, patch, image) are left out
    cfg.variant = fields.pop("variant")
    cfg.num_classes = config_dict.placeholder(int)
    # A pair, so that --config.model.image_size="(224, 160)" works for non-square images.
    cfg.image_size = as_pair(fields.pop("image_size"), "image_size")
    for name in SIZE_FIELDS:
        cfg[name] = config_dict.placeholder(int)
    cfg.patch_size = config_dict.placeholder(tuple)  # None: the variant's
    for key, value in fields.items():
        cfg[key] = as_pair(value, key) if key == "patch_size" and value is not None else value
    return cfg


def timm_to_ours(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Model fields with timm's names replaced by ours (vit_jax/models/zoo.py), in order: a
    field by its name here (drop_path_rate=0.1 -> stochastic_depth=0.1), a timm model name in
    `variant` by the variant and its image size ("vit_base_patch16_224" -> variant="B/16",
    image_size=(224, 224)). Later fields win, as on a command line."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        key = zoo.TIMM_FIELDS.get(key, key)
        timm = zoo.from_timm(value) if key == "variant" and isinstance(value, str) else None
        if timm is None:
            out[key] = value
        else:
            out.pop("image_size", None)  # keep the order: the name's size comes after it
            out["variant"], out["image_size"] = timm[0], (timm[1], timm[1])
    return out


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """The top-level fields of a training config (the sections are declared elsewhere)."""

    seed: int = option(
        0, "seed of initialisation, shuffling, augmentation and the step rng", low=0, high=2**31 - 1
    )
    batch_size: int = option(128, "global training batch, over all devices and hosts", low=1)
    eval_batch_size: int = option(256, "global evaluation batch", low=1)
    total_steps: int = option(1000, "training steps (computed from num_epochs when set)", low=1)
    num_epochs: float | None = option(
        None,
        "if set: total_steps = ceil(num_epochs * train examples / batch_size)",
        type=float,
        low=0,
        low_open=True,
    )
    grad_accum_steps: int = option(1, "micro-batches per step (gradients averaged)", low=1)
    label_smoothing: float = option(
        0.0, "label smoothing of the targets", low=0, high=1, high_open=True
    )
    mixup_alpha: float = option(0.0, "mixup Beta(alpha, alpha) parameter; 0 turns mixup off", low=0)
    parallel: str = option(
        "jit", "jit over a data-parallel mesh, or pmap", choices=parallel.STRATEGIES
    )
    log_every_steps: int = option(50, "steps between training-metric logs", low=1)
    eval_every_steps: int = option(0, "steps between evaluations; 0: at the end only", low=0)
    checkpoint_every_steps: int = option(500, "steps between checkpoints", low=1)
    checkpoint_timeout_minutes: float = option(
        30.0,
        "a checkpoint save (with the wait for the previous one) that takes longer stops the run "
        "(status 1) instead of hanging; 0: wait forever",
        low=0,
    )
    checkpoint_every_minutes: float = option(
        0.0, "also save once this many minutes have passed since the last save; 0: off", low=0
    )
    keep_checkpoints: int = option(2, "newest checkpoints kept in the workdir", low=1)
    nonfinite: str = option(
        "stop",
        "a step with a non-finite loss or gradient norm leaves the state unchanged; then stop the "
        "run (exit status 3) or skip it and go on (counted as nonfinite_steps)",
        choices=("stop", "skip"),
    )
    plots: bool = option(
        True,
        "at the end, draw the training curves and the position embedding into WORKDIR/plots "
        "(needs matplotlib: the `plots` extra; skipped with one line without it)",
    )
    init_from: str | None = option(
        None,
        "weights to start from (not a resume): a workdir, its checkpoints dir, a step dir, an "
        "official / big_vision .npz or Flax msgpack file, an http(s):// or gs:// URL, or a "
        "published name (augreg:B/16-i21k; vit_jax/checkpoint/published.py); resized to the "
        "model, a head of another class count re-made",
        type=str,
    )
    profile_start_step: int = option(
        0,
        "write a jax.profiler trace of the steps after this one to WORKDIR/profile; 0: off",
        low=0,
    )
    profile_num_steps: int = option(5, "steps the profiler trace covers", low=1)
    compilation_cache_dir: str = option(
        "~/.cache/vit_jax/jax",
        "persistent XLA compilation cache (a rerun or resume skips compiling); '': off. The "
        "JAX_COMPILATION_CACHE_DIR environment variable, when set, wins",
        type=str,
    )


@dataclasses.dataclass(frozen=True)
class RestoreOptions:
    """How `init_from` weights are adapted to the model (`config.init_options`), passed to
    `vit_jax.checkpoint.restore_into` as keyword arguments."""

    keep_pre_logits: bool = option(
        False, "keep the checkpoint's pre-logits layer when the head is re-initialised"
    )
    method: str = option(
        DEFAULT_METHOD,
        "interpolation that resizes position embeddings and bias tables (how they move to the "
        "new grid, interpolated or extrapolated, is model.posemb_mode)",
        choices=RESIZE_METHODS,
    )
    antialias: bool = option(DEFAULT_ANTIALIAS, "antialias when a grid is resized down")


SECTIONS = ("model", "data", "optimizer", "init_options", "mesh", "sharding")


def base_config() -> ml_collections.ConfigDict:
    """Every declared field at its default: a small run on the embedded digits."""
    return to_config(
        TrainOptions,
        model=model_config("Ti/16", 224),
        data=to_config(DataOptions),
        optimizer=to_config(OptimizerOptions),
        init_options=to_config(RestoreOptions),
        mesh=to_config(MeshOptions),
        sharding=to_config(ShardingOptions),
    )


@dataclasses.dataclass(frozen=True)
class Settings:
    """A checked config, typed: what the training loop runs on.

    `config` is the resolved, locked ConfigDict (what config.json holds); `model` is None until
    the dataset has decided the class count (`with_dataset`) if model.num_classes was unset.
    """

    config: ml_collections.ConfigDict
    train: TrainOptions
    data: DataOptions
    optimizer: OptimizerOptions
    restore: RestoreOptions
    model: VisionTransformer | None
    mesh: MeshOptions = MeshOptions()
    sharding: ShardingOptions = ShardingOptions()


def validate(config: ml_collections.ConfigDict, *, here: bool = True) -> Settings:
    """Checks every field of every section once, before anything is read or compiled: unknown
    fields (with a did-you-mean), types, choices and ranges, then the rules across fields (the
    batch splits over devices x grad_accum_steps). Raises one ValueError naming the field. The
    rules that need the dataset (its class count, whether its labels are per pixel) are
    checked by `with_dataset`; `here=False` leaves out those that need this machine's devices
    (a pod's config listed on a laptop: --show_config)."""
    config = config.copy_and_resolve_references()
    train = _train_options(config)
    if train.init_from:
        published.resolve(train.init_from)  # a misspelled published name fails here
    data = data_options(_section(config, "data"))
    optimizer = read(OptimizerOptions, _section(config, "optimizer"), "optimizer.")
    restore = read(RestoreOptions, _section(config, "init_options"), "init_options.")
    model_cfg = _section(config, "model")
    mesh = read(MeshOptions, _section(config, "mesh"), "mesh.")
    sharding_options = read(ShardingOptions, _section(config, "sharding"), "sharding.")
    sharding.parse_overrides(sharding_options.overrides)
    model = _build_model(model_cfg)
    _check_parallel(train, mesh, here=here)
    config.lock()
    known = model_cfg.get("num_classes") is not None
    model = model if known else None
    return Settings(config, train, data, optimizer, restore, model, mesh, sharding_options)


def describe(config: ml_collections.ConfigDict) -> str:
    """Every field of `config`, section by section, with its value here, its help and what it
    accepts (`vit-train --config=... --show_config`): the options schema, read for people."""
    config = config.copy_and_resolve_references()
    classes = {
        "model": VisionTransformer,
        "data": DataOptions,
        "optimizer": OptimizerOptions,
        "init_options": RestoreOptions,
        "mesh": MeshOptions,
        "sharding": ShardingOptions,
    }
    top = {k: v for k, v in dict(config).items() if k not in SECTIONS}
    blocks = [options.describe(TrainOptions, top)]
    for name, cls in classes.items():
        values = _section(config, name)
        lines = []
        if name == "model" and values.get("variant"):  # the variant fills the sizes left unset
            variant = values["variant"]
            lines.append(f"model.variant = {variant!r}  size and patch, e.g. 'B/16' (sets these)")
            sizes = zoo.decode_variant(variant)
            values = {
                **sizes,
                **{k: v for k, v in values.items() if k not in sizes or v is not None},
            }
        blocks.append(lines + options.describe(cls, values, f"{name}."))
    return "\n\n".join("\n".join(lines) for lines in blocks)


def _check_parallel(train: TrainOptions, mesh: MeshOptions, *, here: bool = True) -> None:
    """pmap runs without an fsdp axis; and `here`, the mesh fits this machine's devices and
    batches split evenly over them."""
    if here:
        sharding.mesh_shape(mesh, jax.device_count())
    if train.parallel == "pmap" and mesh.fsdp > 1:
        raise ValueError(
            f"parallel='pmap' replicates the whole state on every device, so it cannot shard it "
            f"over mesh.fsdp={mesh.fsdp}: use parallel='jit' for FSDP, or mesh.fsdp=1."
        )
    if here:
        parallel.check_batch_size(train.batch_size, train.grad_accum_steps)
        parallel.check_batch_size(train.eval_batch_size, field="eval_batch_size")


def with_dataset(settings: Settings, info: DatasetInfo) -> Settings:
    """Fills what the dataset decides: model.num_classes (if unset) and total_steps (from
    num_epochs); checks the class count and the classifier against the dataset (per-pixel
    labels train a per-patch classifier, 'unpooled', and only those do) and builds the model."""
    config = settings.config.copy_and_resolve_references()
    with config.unlocked():
        if config.model.get("num_classes") is None:
            config.model.num_classes = info.num_classes
        if settings.train.num_epochs is not None:
            config.total_steps = math.ceil(
                settings.train.num_epochs * info.num_train / settings.train.batch_size
            )
    if config.model.num_classes != info.num_classes:
        raise ValueError(
            f"model.num_classes={config.model.num_classes} but the dataset has "
            f"{info.num_classes} classes: set --config.model.num_classes={info.num_classes}."
        )
    train = _train_options(config)
    model = _build_model(config.model)
    _check_labels(model, info, settings.data.name)
    if info.num_eval == 0:
        data = settings.data
        raise ValueError(
            f"the evaluation split of {data.title} is empty, and a run evaluates at least "
            "once, at the end: "
            + (
                f"data.eval_fraction={data.eval_fraction} of the images of each class holds "
                "out none; set data.eval_dir, or a larger data.eval_fraction."
                if data.source == "folder" and not data.eval_dir
                else "set data.eval_dir to a folder with images."
                if data.source == "folder"
                else f"data.eval_split={data.eval_split!r} has none; name a split with images."
            )
        )
    if info.flip_changes_label and settings.data.flip:
        raise ValueError(
            f"dataset {settings.data.name!r} has labels that a horizontal flip changes (a "
            "flipped example would train on a wrong label): set --config.data.flip=False."
        )
    config.lock()
    return dataclasses.replace(settings, config=config, train=train, model=model)


def _check_labels(model: VisionTransformer, info: DatasetInfo, name: str) -> None:
    """A dataset with per-pixel labels needs per-patch logits (classifier='unpooled'); one
    label per image needs pooled logits."""
    if info.dense_labels and model.classifier != "unpooled":
        raise ValueError(
            f"dataset {name!r} has a label per pixel, which model.classifier="
            f"{model.classifier!r} (one prediction per image) cannot train on: use "
            "--config.model.classifier=unpooled (a prediction per patch)."
        )
    if not info.dense_labels and model.classifier == "unpooled":
        raise ValueError(
            "model.classifier='unpooled' gives per-token logits, which a classification run "
            f"(dataset {name!r}: one label per image) cannot train on: use 'token', 'gap' or "
            "'map', or a dataset with per-pixel labels such as 'digits_segmentation'."
        )


def _section(config: ml_collections.ConfigDict, name: str) -> dict[str, Any]:
    """The section `name` of `config` as a plain dict ({} if absent: all defaults)."""
    section = config.get(name)
    return {} if section is None else dict(section)


def _train_options(config: Mapping[str, Any]) -> TrainOptions:
    """The top-level fields as TrainOptions; an unknown top-level field is an error. With
    num_epochs set, an unset total_steps stands in as 1 until the dataset decides it."""
    fields = dict(config)
    if fields.get("num_epochs") is not None and fields.get("total_steps") is None:
        fields["total_steps"] = 1
    values = check(TrainOptions, fields, extra=SECTIONS)
    return TrainOptions(**{k: v for k, v in values.items() if k not in SECTIONS})


def _build_model(model_cfg: Mapping[str, Any]) -> VisionTransformer:
    """The model of a model section (an unset num_classes stands in as 1, to check the other
    fields before the dataset decides it). A message that names a model field names it as the
    config does (dtype='bf16' -> model.dtype='bf16')."""
    fields = dict(model_cfg)
    if fields.get("num_classes") is None:
        fields["num_classes"] = 1
    try:
        return models.build(fields)
    except ValueError as e:
        named = re.match(r"(\w+)=", str(e))
        if named and named[1] in fields:
            raise ValueError(f"model.{e}") from None
        raise


def parse_arg(arg: str | None, **defaults) -> dict:
    """'variant=S/16,posemb=rope_axial' -> {'variant': 'S/16', 'posemb': 'rope_axial'}: the
    `arg` of a config file (--config=FILE:ARG). Each value is read as the type of its default
    ('scan=False' is False for a bool default; a None default takes the text)."""
    values = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(
                f"config argument {item!r} is not KEY=VALUE with KEY in {sorted(defaults)}."
            )
        if key not in defaults:
            raise ValueError(
                f"config argument {key!r} is not one this config takes "
                f"({', '.join(sorted(defaults))}){did_you_mean(key, tuple(defaults))}."
            )
        kind = str if defaults[key] is None else type(defaults[key])
        values[key] = from_text(f"config argument {key}", value, kind)
    return values


def config_from_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of the config file at `path` (a configs/*.py file, or any file that
    defines get_config)."""
    name, suffix = os.path.splitext(os.path.basename(path))
    if suffix != ".py":
        raise ValueError(f"config file {path} is not a .py file with a get_config(arg=None).")
    spec = importlib.util.spec_from_file_location(f"vit_jax_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:  # not Python yet: where, in one line (other errors: a traceback)
        where = f"{e.filename or path}, line {e.lineno}" if e.lineno else (e.filename or path)
        text = f": {e.text.strip()}" if e.text and e.text.strip() else ""
        raise ValueError(f"config file {where}: {e.msg}{text}") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ValueError(f"config file {path} has no get_config(arg=None) function.")
    takes_arg = bool(inspect.signature(get_config).parameters)
    if arg is not None and not takes_arg:
        raise ValueError(
            f"config file {path}: its get_config() takes no argument, so ':{arg}' cannot go to "
            "it: drop it (set fields with --config.FIELD=VALUE), or define get_config(arg=None)."
        )
    try:
        config = get_config(arg) if takes_arg else get_config()
    except TypeError as e:  # ml_collections keeps each field's type: `image_size = 32`
        if not (typed := re.match(r"Could not override field '(\w+)'", str(e))):
            raise
        pair = "'tuple'" in str(e)
        raise ValueError(
            f"config file {path}: {typed[1]} cannot take that value: {e}. A field keeps the "
            "type of its default"
            + ("; it is a (height, width) pair: write e.g. (32, 32)." if pair else ".")
        ) from None
    if isinstance(config, dict):
        config = ml_collections.ConfigDict(config)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(
            f"config file {path}: get_config returned {config!r:.60} "
            f"({type(config).__name__}), not an ml_collections.ConfigDict."
        )
    return config


def sibling_config(config_file: str, name: str, arg: str | None = None):
    """`get_config(arg)` of configs/<name>.py next to `config_file`, so that one experiment can
    build on another wherever the command is run from."""
    return config_from_file(
        os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py"), arg
    )
