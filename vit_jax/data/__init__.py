"""Data: tfds datasets or image folders -> grain loaders of per-process numpy batches.

Open the dataset once with `open_dataset(data_options(config.data))`, then draw from it with
`train_loader(dataset, ...)` and `eval_batches(dataset, ...)`; `dataset.info` says what a model
needs to know. The config fields are declared in `vit_jax.data.options` (`DataOptions`).
"""

from vit_jax.data.digits import SklearnDigits, prepare_digits
from vit_jax.data.folder import ImageFolderSource, SkipUnreadable, scan_folder
from vit_jax.data.options import DataOptions, data_options
from vit_jax.data.pipeline import (
    Dataset,
    DatasetInfo,
    DatasetNotPreparedError,
    eval_batches,
    image_channels,
    open_dataset,
    train_loader,
)
from vit_jax.data.transforms import UnreadableImageError

__all__ = [
    "DataOptions",
    "Dataset",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "ImageFolderSource",
    "SkipUnreadable",
    "SklearnDigits",
    "UnreadableImageError",
    "data_options",
    "eval_batches",
    "image_channels",
    "open_dataset",
    "prepare_digits",
    "scan_folder",
    "train_loader",
]
