"""The fields of a training config and their defaults, shared by every experiment.

Each configs/<experiment>.py starts from `base_config()` and changes what its experiment needs;
every field can be overridden on the command line, e.g.
--config.model.posemb=rope_axial --config.batch_size=256. Data fields are documented in
vit_jax/data/pipeline.py, optimizer fields in vit_jax/train/optim.py, model fields in
vit_jax/models/vit.py (VisionTransformer).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import ml_collections
from ml_collections import config_dict

from vit_jax.models.vit import VisionTransformer, as_pair

# Model fields whose default is None need a typed placeholder to be overridable from the CLI.
_PLACEHOLDERS = {"representation_size": int}
# Size fields come from the variant string ("B/16"); a value set here overrides it.
_SIZE_FIELDS = ("hidden_size", "num_layers", "num_heads", "mlp_dim")


def model_config(
    variant: str, image_size: int | tuple[int, int], **overrides
) -> ml_collections.ConfigDict:
    """Every VisionTransformer field with its default, so each one can be set from the CLI."""
    cfg = ml_collections.ConfigDict()
    cfg.variant = variant
    cfg.num_classes = config_dict.placeholder(int)  # None: taken from the dataset
    # A pair, so that --config.model.image_size="(224, 160)" works for non-square images.
    cfg.image_size = as_pair(image_size, "image_size")
    for name in _SIZE_FIELDS:
        cfg[name] = config_dict.placeholder(int)
    for field in dataclasses.fields(VisionTransformer):
        if field.name in (
            "parent",
            "name",
            "num_classes",
            "image_size",
            "patch_size",
            *_SIZE_FIELDS,
        ):
            continue
        if field.name in _PLACEHOLDERS:
            cfg[field.name] = config_dict.placeholder(_PLACEHOLDERS[field.name])
        else:
            cfg[field.name] = field.default
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by all experiments (a small run on the embedded digits)."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = model_config("Ti/16", 224)

    config.data = ml_collections.ConfigDict(
        dict(
            source="tfds",
            name="sklearn_digits",
            data_dir=config_dict.placeholder(str),
            train_split="train",
            eval_split="test",
            train_dir=config_dict.placeholder(str),
            eval_dir=config_dict.placeholder(str),
            eval_fraction=0.1,
            split_seed=0,
            augment="inception",
            crop_area_min=0.08,
            flip=True,
            eval_crop_fraction=1.0,
            bad_image="stop",
            cache=False,
            num_workers=0,
            read_threads=2,
            prefetch=2,
        )
    )

    config.batch_size = 128  # global, over all devices and hosts
    config.eval_batch_size = 256
    config.total_steps = 1000
    config.num_epochs = config_dict.placeholder(float)  # if set, overrides total_steps
    config.grad_accum_steps = 1
    config.label_smoothing = 0.0
    config.mixup_alpha = 0.0

    config.optimizer = ml_collections.ConfigDict(
        dict(
            name="adamw",
            learning_rate=1e-3,
            schedule="cosine",
            warmup_steps=100,
            end_learning_rate=0.0,
            weight_decay=0.05,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            momentum=0.9,
            nesterov=False,
            grad_clip_norm=1.0,
        )
    )

    config.parallel = "jit"  # or "pmap"
    config.log_every_steps = 50
    config.eval_every_steps = 0  # 0: evaluate at the end only
    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 2
    # Weights to start from (not a resume: optimizer and step start afresh): a workdir, its
    # checkpoints dir, one step dir, or an official / big_vision .npz. Position embeddings,
    # bias tables and the patch kernel are resized to this model; a head of another class count
    # is re-initialised.
    config.init_from = config_dict.placeholder(str)
    config.init_options = ml_collections.ConfigDict(
        dict(keep_pre_logits=False, method="cubic", antialias=True)
    )
    return config


def parse_arg(arg: str | None, **defaults) -> dict:
    """'variant=S/16,posemb=rope_axial' -> {'variant': 'S/16', 'posemb': 'rope_axial'}."""
    values = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            raise ValueError(
                f"config argument {item!r} is not KEY=VALUE with KEY in {sorted(defaults)}."
            )
        values[key] = type(defaults[key])(value) if defaults[key] is not None else value
    return values


def sibling_config(config_file: str, name: str, arg: str | None = None):
    """`get_config(arg)` of configs/<name>.py next to `config_file`, so that one experiment can
    build on another wherever the command is run from."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"vit_jax_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)
