"""Input pipelines: a tfds dataset or an image folder -> grain -> per-process numpy batches.

    dataset = open_dataset(data_options(config.data))  # once per run: folder walked, cache filled
    dataset.info                       # DatasetInfo(num_classes, ..., channels, class_names)
    train_ds = train_loader(dataset, image_size=(32, 32), global_batch_size=128, seed=0)
    train_iter = iter(train_ds)        # checkpointable: grain.checkpoint.CheckpointSave(train_iter)
    batch = next(train_iter)           # {'image': f32 [b, H, W, C] in [-1, 1], 'label': i32 [b]}
    for batch in eval_batches(dataset, image_size=(32, 32), global_batch_size=256):
        ...                            # plus 'mask': f32 [b], 0 for padding

A dataset whose examples carry a per-pixel class map 'segmentation' (`info.dense_labels`, e.g.
`digits_segmentation`) gives 'label' i32 [b, H, W] instead: the map cropped, resized (nearest)
and flipped with its image.

b = global_batch_size // jax.process_count(); each process reads its own shard. The fields of
the data config, their defaults and allowed values are declared in `vit_jax.data.options`.

Determinism: batches depend only on the data, the config, `seed`, the process's shard and
`num_workers` (with workers, each worker reads a strided slice of the stream).
"""

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import flags

from vit_jax.data import canvas, digits
from vit_jax.data.folder import (
    FolderIndex,
    ImageFolderSource,
    SkipUnreadable,
    scan_folder,
    split_held_out,
)
from vit_jax.data.options import DataOptions
from vit_jax.data.transforms import (
    DATASET_IMAGE_FIX,
    Box,
    center_crop_box,
    crop_and_resize,
    decode_image,
    flip_left_right,
    inception_crop_box,
    to_model_range,
)
from vit_jax.options import unknown_choice

SPLITS = ("train", "eval")
FOLDER_CHANNELS = 3  # an image folder's files are decoded as RGB (grayscale files too)


class DatasetNotPreparedError(ValueError):
    """A tfds dataset that is not (yet) in the data directory as array_record files."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model and a training loop need to know about a dataset."""

    num_classes: int
    num_train: int
    num_eval: int
    channels: int  # Image channels at the model input: 1 (grayscale) or 3 (RGB).
    # Label i's name (tfds: the label feature's names; folder: the subfolder names).
    class_names: tuple[str, ...] = ()
    # Whether examples carry a class per pixel ('segmentation'): batch labels are [b, H, W].
    dense_labels: bool = False
    # Whether a horizontal flip can change an example's label (digits_position: the side the
    # digit is on), so that data.flip would train on wrong labels. Declared by a tfds builder
    # as metadata `flip_changes_label`.
    flip_changes_label: bool = False


# --------------------------------------------------------------------------------------------
# Sources: random access, `source[i]` = {'image': uint8 [h, w, c], 'label': int}, and for
# datasets with per-pixel labels 'segmentation': uint8 [h, w] or [h, w, 1].


class TfdsSource:
    """Random access to a tfds split stored as array_record, with images decoded by Pillow.

    The split is opened with image decoding skipped so that Pillow decodes here, where an
    unreadable record raises `UnreadableImageError`; already decoded arrays are accepted too.
    """

    def __init__(self, name: str, split: str, data_dir: str | None, channels: int):
        self.where = f"{name}/{split}"
        self.channels = channels
        self._records = tfds.data_source(
            name,
            split=split,
            data_dir=data_dir,
            download=False,
            decoders={"image": tfds.decode.SkipDecoding()},
        )

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: int) -> dict:
        record = self._records[i]
        image = record["image"]
        if isinstance(image, bytes):
            where = f"{self.where} record {i}"
            image = decode_image(image, rgb=self.channels != 1, where=where, fix=DATASET_IMAGE_FIX)
        image = np.asarray(image, np.uint8)
        image = image[..., None] if image.ndim == 2 else image
        example = {"image": image, "label": record["label"]}
        if "segmentation" in record:
            example["segmentation"] = np.asarray(record["segmentation"], np.uint8)
        return example


def _not_prepared(opts: DataOptions) -> DatasetNotPreparedError:
    data_dir = opts.data_dir or tfds.core.constants.DATA_DIR
    return DatasetNotPreparedError(
        f"tfds dataset {opts.name!r} is not prepared as array_record files in {data_dir}. "
        "Prepare it once, with TensorFlow (pip install tensorflow-cpu) and the network, or "
        f"the archives downloaded by hand in {data_dir}/downloads/manual:\n"
        f'  python -c "import tensorflow_datasets as tfds; tfds.builder({opts.name!r}, '
        f"data_dir={str(data_dir)!r}, file_format='array_record').download_and_prepare()\""
    )


# The tfds datasets this package builds itself, with no download, when first opened.
EMBEDDED = {digits.NAME: digits.SklearnDigits, **canvas.BUILDERS}


def _tfds_builder(opts: DataOptions) -> tfds.core.DatasetBuilder:
    """The builder of `opts.name`, prepared as array_record (EMBEDDED: built here if missing)."""
    if opts.name in EMBEDDED:
        digits.prepare(EMBEDDED[opts.name], opts.data_dir)
    builder = _tfds_definition(opts)
    with _quiet_about_missing_preparation():
        prepared = builder.is_prepared()
    if not prepared:
        raise _not_prepared(opts)
    return builder


def _tfds_definition(opts: DataOptions) -> tfds.core.DatasetBuilder:
    """The builder of `opts.name` as its code defines it (features, splits), prepared or not."""
    with _quiet_about_missing_preparation():
        try:
            return tfds.builder(opts.name, data_dir=opts.data_dir)
        except tfds.core.registered.DatasetNotFoundError as error:
            raise ValueError(
                f"Unknown tfds dataset {opts.name!r} (data.name). Use a tfds catalog name such "
                f"as '{digits.NAME}', 'cifar10' or 'imagenet2012', or data.source='folder'."
            ) from error
        except ValueError as error:  # a config or version tfds cannot parse or find
            raise ValueError(
                f"tfds cannot open data.name={opts.name!r}: {_one_line(error)}"
            ) from error


def _one_line(error: Exception) -> str:
    """tfds's message of `error` on one line (some span several, with blank ones)."""
    return " ".join(str(error).split())


def image_channels(opts: DataOptions) -> int:
    """The channels the model's input images will have (1 grayscale, 3 RGB), without reading
    or preparing any data: a folder's images are read as RGB, a tfds dataset's as its image
    feature declares. Raises ValueError for an unknown tfds name."""
    if opts.source == "folder":
        return FOLDER_CHANNELS
    return _tfds_channels(_tfds_definition(opts))


@contextlib.contextmanager
def _quiet_about_missing_preparation():
    """tfds warns "Variant folder ... has no dataset_info.json" when a dataset is not prepared
    where it looks; `_not_prepared` then says so, with what to do, in one message."""

    def keep(record: logging.LogRecord) -> bool:
        return "has no dataset_info.json" not in record.getMessage()

    logger = logging.getLogger("absl")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _check_tfds_split(builder: tfds.core.DatasetBuilder, split: str) -> None:
    # Split expressions like 'train[:90%]+validation' name their base splits before any '['.
    names = {part.split("[")[0].strip() for part in split.split("+")}
    unknown = sorted(names - set(builder.info.splits.keys()))
    if unknown:
        raise ValueError(
            f"tfds dataset {builder.name!r} has no split {unknown}; it has "
            f"{sorted(builder.info.splits.keys())}."
        )


def _tfds_channels(builder: tfds.core.DatasetBuilder) -> int:
    features = builder.info.features
    if not {"image", "label"} <= set(features.keys()):
        raise ValueError(
            f"tfds dataset {builder.name!r} has features {sorted(features.keys())}; the loaders "
            "need an 'image' and a 'label' feature."
        )
    return features["image"].shape[-1] or 3


def _folder_indices(opts: DataOptions) -> dict[str, FolderIndex]:
    """The folder source's {'train', 'eval'} indices (eval may be empty with eval_fraction 0)."""
    train = scan_folder(opts.train_dir)
    if opts.eval_dir:
        return {"train": train, "eval": scan_folder(opts.eval_dir, classes=train.classes)}
    train, held_out = split_held_out(train, opts.eval_fraction, opts.split_seed)
    return {"train": train, "eval": held_out}


def _tfds_sources(opts: DataOptions) -> tuple[dict[str, Sequence[dict]], DatasetInfo]:
    """The tfds dataset's {'train', 'eval'} sources and its info."""
    builder = _tfds_builder(opts)
    splits = {"train": opts.train_split, "eval": opts.eval_split}
    for tfds_split in splits.values():
        _check_tfds_split(builder, tfds_split)
    channels = _tfds_channels(builder)
    sources = {}
    for split, tfds_split in splits.items():
        try:
            sources[split] = TfdsSource(opts.name, tfds_split, opts.data_dir, channels)
            len(sources[split])  # a slice past the split's end, or reversed, fails here
        except NotImplementedError as error:  # Prepared, but only in another file format.
            raise _not_prepared(opts) from error
        except ValueError as error:
            raise ValueError(
                f"data.{split}_split={tfds_split!r} cannot be read from {opts.name!r}: "
                f"{_one_line(error)}. Split expressions look like 'train', 'train[:90%]', "
                "'train[100:200]' or 'train+test'."
            ) from error
    features = builder.info.features
    metadata = builder.info.metadata or {}
    info = _info(
        sources,
        features["label"].names,
        channels,
        dense_labels="segmentation" in features,
        flip_changes_label=bool(metadata.get("flip_changes_label", False)),
    )
    return sources, info


def _info(
    sources: dict[str, Sequence[dict]],
    class_names: Sequence[str],
    channels: int,
    dense_labels: bool = False,
    flip_changes_label: bool = False,
) -> DatasetInfo:
    return DatasetInfo(
        num_classes=len(class_names),
        num_train=len(sources["train"]),
        num_eval=len(sources["eval"]),
        channels=channels,
        class_names=tuple(class_names),
        dense_labels=dense_labels,
        flip_changes_label=flip_changes_label,
    )


def _wrap(source: Sequence[dict], opts: DataOptions) -> Sequence[dict]:
    """The source as the loaders read it: unreadable images skipped and/or decoded up front."""
    if opts.bad_image == "skip":
        source = SkipUnreadable(source)
    if opts.cache:
        # Decoded once, held as a list (copied into each worker): for small datasets only.
        source = [source[i] for i in range(len(source))]
    return source


@dataclasses.dataclass(frozen=True)
class Dataset:
    """An opened dataset: its `info` and the random-access sources of its two splits.

    `train[i]` / `eval[i]` = {'image': uint8 [h, w, info.channels], 'label': int} (and, with
    `info.dense_labels`, 'segmentation': uint8 [h, w] or [h, w, 1]). An unreadable
    image raises `UnreadableImageError` (bad_image='stop') or gives None (bad_image='skip').
    Opened once per run by `open_dataset` and shared by every loader and evaluation pass.
    """

    options: DataOptions
    info: DatasetInfo
    train: Sequence[dict]
    eval: Sequence[dict]

    def split(self, name: str) -> Sequence[dict]:
        """The source of split `name` ('train' or 'eval')."""
        if name not in SPLITS:
            raise unknown_choice("split", name, SPLITS)
        return getattr(self, name)


def open_dataset(opts: DataOptions) -> Dataset:
    """Opens the configured dataset once: a tfds dataset's two splits (the embedded digits are
    built on first use), or an image folder walked once; with `cache` both splits are decoded
    here. Raises ValueError (or `DatasetNotPreparedError`) for data that cannot be read."""
    if opts.source == "folder":
        indices = _folder_indices(opts)
        raw = {split: ImageFolderSource(index) for split, index in indices.items()}
        info = _info(raw, indices["train"].classes, channels=FOLDER_CHANNELS)
    else:
        raw, info = _tfds_sources(opts)
    sources = {split: _wrap(source, opts) for split, source in raw.items()}
    return Dataset(opts, info, sources["train"], sources["eval"])


# --------------------------------------------------------------------------------------------
# Per-example preprocessing (runs in the workers).


def transform_example(example: dict, box: Box, size: tuple[int, int], flip: bool) -> dict:
    """Crops `box` from one example, resizes it to `size` = (H, W) and optionally mirrors it:
    {'image': uint8 [h, w, c], 'label'} -> {'image': float32 [H, W, c] in [-1, 1], 'label':
    int32}. An example with a 'segmentation' map [h, w] (or [h, w, 1]) gets the same crop,
    nearest-neighbour resize and flip of it as its 'label': int32 [H, W]."""
    image = crop_and_resize(example["image"], box, size)
    if flip:
        image = flip_left_right(image)
    out = {"image": to_model_range(image), "label": np.int32(example["label"])}
    if "segmentation" in example:
        out["label"] = _label_map(example["segmentation"], example["image"].shape, box, size, flip)
    return out


def _label_map(segmentation: np.ndarray, image_shape, box: Box, size, flip: bool) -> np.ndarray:
    """uint8 [h, w] or [h, w, 1] -> int32 [H, W]: cropped, resized (nearest) and flipped."""
    classes = np.asarray(segmentation, np.uint8)
    classes = classes[..., None] if classes.ndim == 2 else classes
    if classes.shape != (*image_shape[:2], 1):
        raise ValueError(
            f"A 'segmentation' map of shape {segmentation.shape} goes with an image of shape "
            f"{tuple(image_shape)}: it must be [h, w] or [h, w, 1], one class per pixel of the "
            "image."
        )
    classes = crop_and_resize(classes, box, size, nearest=True)
    if flip:
        classes = flip_left_right(classes)
    return classes[..., 0].astype(np.int32)


@dataclasses.dataclass(frozen=True)
class TrainPreprocess(grain.transforms.RandomMap):
    """Augments one example (`transform_example`): {'image': uint8 [h, w, c], 'label'} ->
    float32 [H, W, c], int32 (or int32 [H, W] from a 'segmentation' map).

    'inception': random resized crop (area crop_area_min..1, aspect 3/4..4/3) to `size`;
    'resize': the whole image resized to `size`. Then an optional random horizontal flip.
    """

    size: tuple[int, int]
    augment: str
    crop_area_min: float
    flip: bool

    def random_map(self, example: dict, rng: np.random.Generator) -> dict:
        height, width = example["image"].shape[:2]
        if self.augment == "inception":
            box = inception_crop_box(height, width, rng, area_range=(self.crop_area_min, 1.0))
        else:
            box = (0, 0, height, width)
        flip = bool(self.flip and rng.random() < 0.5)
        return transform_example(example, box, self.size, flip)


@dataclasses.dataclass(frozen=True)
class EvalExample(grain.transforms.Map):
    """Index -> evaluation example {'image': f32 [H, W, c], 'label': i32, 'mask': f32} (with
    `dense_labels`, 'label' i32 [H, W]), center-cropped (`transform_example`).

    Index -1 is padding and an unreadable image (None from `SkipUnreadable`) is dropped: both
    give a zero image and label with mask 0, so every process still yields full, equally many
    batches.
    """

    source: Sequence[dict]
    size: tuple[int, int]
    channels: int
    crop_fraction: float
    dense_labels: bool = False

    def map(self, index: int) -> dict:
        example = self.source[index] if index >= 0 else None
        if example is None:
            return {
                "image": np.zeros((*self.size, self.channels), np.float32),
                "label": np.zeros(self.size, np.int32) if self.dense_labels else np.int32(0),
                "mask": np.float32(0),
            }
        box = center_crop_box(*example["image"].shape[:2], self.crop_fraction)
        return {**transform_example(example, box, self.size, flip=False), "mask": np.float32(1)}


# --------------------------------------------------------------------------------------------
# Loaders.


def _per_process_batch(
    global_batch_size: int, shard: grain.sharding.ShardOptions | None
) -> tuple[grain.sharding.ShardOptions, int]:
    shard = shard or grain.sharding.ShardByJaxProcess(drop_remainder=True)
    if global_batch_size <= 0 or global_batch_size % shard.shard_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of the number of "
            f"processes ({shard.shard_count}): each process loads an equal part of every batch."
        )
    return shard, global_batch_size // shard.shard_count


def _read_options(opts: DataOptions) -> grain.ReadOptions:
    # A short per-example read-ahead is enough to keep the threads busy; whole batches are
    # buffered by `_prefetch`, so this does not need tuning per dataset.
    return grain.ReadOptions(num_threads=opts.read_threads, prefetch_buffer_size=64)


def _prefetch(ds: grain.IterDataset, opts: DataOptions) -> grain.IterDataset:
    """Reads ahead `opts.prefetch` batches: in worker processes, or in a thread of this one."""
    if opts.num_workers > 0:
        # grain's worker start-up reads one of its absl flags, which fails outside `app.run`
        # (tests, notebooks) unless flags count as parsed; their defaults are kept.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        options = grain.MultiprocessingOptions(
            num_workers=opts.num_workers, per_worker_buffer_size=opts.prefetch
        )
        return ds.mp_prefetch(options)
    return grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=opts.prefetch)


@dataclasses.dataclass(frozen=True)
class ProcessBatch(grain.transforms.Map):
    """Step t -> this process's rows of the global batch of step t, stacked: {'image': [b, H, W, C],
    'label': [b] or [b, H, W]}. Process i of a run with global batch B and b = B / processes takes
    the examples at global positions t*B + i*b ... t*B + (i+1)*b - 1 of `stream`. A skipped (None)
    example is replaced by the first readable one of those rows."""

    stream: grain.MapDataset
    global_batch_size: int
    batch_size: int
    shard_index: int

    def map(self, step: int) -> dict | None:
        first = step * self.global_batch_size + self.shard_index * self.batch_size
        rows = [self.stream[first + r] for r in range(self.batch_size)]
        readable = [r for r in rows if r is not None]
        if not readable:
            return None
        rows = [readable[0] if r is None else r for r in rows]
        return {key: np.stack([r[key] for r in rows]) for key in rows[0]}


def train_loader(
    dataset: Dataset,
    *,
    image_size: tuple[int, int],
    global_batch_size: int,
    seed: int,
    shard: grain.sharding.ShardOptions | None = None,
    start_step: int = 0,
) -> grain.IterDataset:
    """The infinite, shuffled, augmented training stream of this process, from step
    `start_step`, over the opened `dataset`'s train split.

    `iter()` of the result yields {'image': float32 [b, H, W, C] in [-1, 1], 'label': int32 [b]
    (int32 [b, H, W] with `info.dense_labels`)} with b = global_batch_size // process count. The
    global batch of step t depends on the seed and t only: one stream over the whole split,
    reshuffled every epoch with the seed, each example augmented with a key of the seed and its
    position in the stream; process i takes rows [i*b, (i+1)*b) of every global batch (`shard`
    defaults to `ShardByJaxProcess`; pass `ShardOptions` to simulate processes). So runs on any
    topology (1 process x 8 devices, 2 x 4, ...) see the same examples in the same order, and a run
    resumed at step t, on any topology and with any number of workers, continues with exactly the
    batches an uninterrupted one would have seen. Batches run across epoch boundaries, so none is
    partial. With bad_image='skip', a skipped example is replaced by the first readable one of the
    process's rows. Call the iterator's `close()` to stop its threads or worker processes early.
    """
    opts = dataset.options
    shard, batch_size = _per_process_batch(global_batch_size, shard)
    if len(dataset.train) == 0:
        raise ValueError("The training split is empty.")
    # The seeds of the one-process stream of earlier versions (shard index 0), so that their
    # runs resume with the same batches.
    shuffle_seed, augment_seed = np.random.SeedSequence([seed, 0]).generate_state(2)
    preprocess = TrainPreprocess(tuple(image_size), opts.augment, opts.crop_area_min, opts.flip)
    stream = (
        grain.MapDataset.source(dataset.train)
        .shuffle(int(shuffle_seed))
        .repeat()
        .random_map(preprocess, seed=int(augment_seed))
    )
    # One element per step, so that worker processes split the stream by whole batches and
    # the sequence of batches is the same with any number of workers, and from any start.
    batch = ProcessBatch(stream, global_batch_size, batch_size, shard.shard_index)
    steps = grain.MapDataset.range(start_step, start_step + len(stream) // global_batch_size)
    return _prefetch(steps.map(batch).to_iter_dataset(_read_options(opts)), opts)


def eval_batches(
    dataset: Dataset,
    *,
    image_size: tuple[int, int],
    global_batch_size: int,
    split: str = "eval",
    shard: grain.sharding.ShardOptions | None = None,
) -> Iterator[dict]:
    """One pass over the opened `dataset`'s `split` ('eval' or 'train'): every example exactly
    once across processes. Nothing is re-opened or re-decoded (each call is a new pass).

    Yields {'image': float32 [b, H, W, C] in [-1, 1], 'label': int32 [b] (int32 [b, H, W] with
    `info.dense_labels`), 'mask': float32 [b]} with b = global_batch_size // process count. The last
    batches are padded (mask 0, zero image, label 0) and every process yields the same number of
    batches, so collective metric reductions line up. Images are center-cropped (eval_crop_fraction)
    and resized.
    """
    opts = dataset.options
    shard, batch_size = _per_process_batch(global_batch_size, shard)
    source = dataset.split(split)
    if len(source) == 0:
        raise ValueError(
            f"The {split} split is empty; for a folder source set data.eval_dir or "
            "data.eval_fraction > 0."
        )
    indices = list(range(shard.shard_index, len(source), shard.shard_count))
    per_process = -(-len(source) // shard.shard_count)  # Largest shard, rounded up to batches:
    num_batches = -(-per_process // batch_size)  # the same for every process.
    indices += [-1] * (num_batches * batch_size - len(indices))
    example = EvalExample(
        source,
        tuple(image_size),
        dataset.info.channels,
        opts.eval_crop_fraction,
        dataset.info.dense_labels,
    )
    # Batching the MapDataset keeps whole batches together when workers split the stream.
    ds = grain.MapDataset.source(indices).map(example).batch(batch_size)
    return _closing(iter(_prefetch(ds.to_iter_dataset(_read_options(opts)), opts)))


def _closing(iterator: grain.DatasetIterator) -> Iterator[dict]:
    # Stops prefetch threads and worker processes when the pass ends or is abandoned.
    try:
        yield from iterator
    finally:
        iterator.close()
