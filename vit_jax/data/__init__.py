"""Data: tfds datasets or image folders -> grain loaders of per-process numpy batches.

Start with `train_loader(config.data, ...)`, `eval_batches(config.data, ...)` and
`dataset_info(config.data)`; the config fields are listed in `vit_jax.data.pipeline`.
"""

from vit_jax.data.digits import SklearnDigits, prepare_digits
from vit_jax.data.folder import ImageFolderSource, SkipUnreadable, scan_folder
from vit_jax.data.pipeline import (
    DataOptions,
    DatasetInfo,
    DatasetNotPreparedError,
    data_options,
    dataset_info,
    eval_batches,
    open_source,
    train_loader,
)
from vit_jax.data.transforms import UnreadableImageError

__all__ = [
    "DataOptions",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "ImageFolderSource",
    "SkipUnreadable",
    "SklearnDigits",
    "UnreadableImageError",
    "data_options",
    "dataset_info",
    "eval_batches",
    "open_source",
    "prepare_digits",
    "scan_folder",
    "train_loader",
]
