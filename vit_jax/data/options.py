"""The data config (`config.data`): every field declared once, with its default and its check.

`DataOptions` is the schema; `data_options(config.data)` reads a ConfigDict (or a dict; absent
fields take their defaults) into it, checking every value and the one cross-field rule (a folder
source needs `train_dir`). `vit_jax.train.config.base_config()` takes its data section from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from vit_jax.data.digits import NAME as DIGITS
from vit_jax.options import option, read

SOURCES = ("tfds", "folder")
AUGMENTS = ("inception", "resize")
BAD_IMAGE = ("skip", "stop")


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """Where the images come from, how training images are augmented and how they are read."""

    source: str = option("tfds", "where the images come from", choices=SOURCES)
    name: str = option(
        DIGITS,
        "tfds name: 'sklearn_digits', 'digits_position' or 'digits_segmentation' (embedded, built "
        "on first use), 'cifar10', ...",
    )
    data_dir: str | None = option(
        None, "tfds data directory; None = tfds default (~/tensorflow_datasets)", type=str
    )
    train_split: str = option("train", "tfds split for training, e.g. 'train' or 'train[:90%]'")
    eval_split: str = option("test", "tfds split for evaluation")
    train_dir: str | None = option(
        None, "folder source: root/<class_name>/*.jpg|jpeg|png", type=str
    )
    eval_dir: str | None = option(
        None, "folder source: evaluation folder; None = hold out eval_fraction", type=str
    )
    eval_fraction: float = option(
        0.1,
        "folder source without eval_dir: stratified held-out fraction",
        low=0,
        high=1,
        high_open=True,
    )
    split_seed: int = option(0, "folder source: seed of that held-out split (not the run's seed)")
    augment: str = option(
        "inception",
        "training augmentation: random resized crop ('inception') or plain resize",
        choices=AUGMENTS,
    )
    crop_area_min: float = option(
        0.08,
        "inception crop: smallest crop area fraction (aspect 3/4..4/3)",
        low=0,
        low_open=True,
        high=1,
    )
    flip: bool = option(True, "random horizontal flip in training (off for digits)")
    eval_crop_fraction: float = option(
        1.0,
        "evaluation: central fraction of each side kept before resizing",
        low=0,
        low_open=True,
        high=1,
    )
    bad_image: str = option(
        "stop", "unreadable image: 'skip' (drop, count, warn) or 'stop' (raise)", choices=BAD_IMAGE
    )
    cache: bool = option(
        False, "decode each split into memory once, when the dataset is opened (small data only)"
    )
    num_workers: int = option(0, "worker processes; 0 = read in this process", low=0)
    read_threads: int = option(2, "threads reading and transforming records (per worker)", low=1)
    prefetch: int = option(2, "batches buffered ahead (per worker when num_workers > 0)", low=1)

    @property
    def title(self) -> str:
        """How messages name the data: the tfds name, or the image folder."""
        return self.name if self.source == "tfds" else f"the image folder {self.train_dir}"


def data_options(data_cfg: Mapping[str, Any], where: str = "data.") -> DataOptions:
    """Reads a data config (ConfigDict or dict) into `DataOptions`: unknown fields, types,
    choices and ranges are checked by the schema; then the cross-field rule."""
    opts = read(DataOptions, data_cfg, where)
    if opts.source == "folder" and not opts.train_dir:
        raise ValueError(
            f"{where}source='folder' needs {where}train_dir (root/<class_name>/*.jpg)."
        )
    return opts
