"""The embedded default dataset: scikit-learn's 8x8 handwritten digits as a tfds dataset.

`sklearn.datasets.load_digits()` ships 1,797 grayscale 8x8 images (pixel values 0..16, ten
classes) inside scikit-learn, so this dataset builds with no network and no TensorFlow: the
builder yields PNG bytes already encoded with Pillow (the `tfds.features.Image` encoder needs
TensorFlow only for numpy input) and writes array_record files that `tfds.data_source` reads.

    prepare_digits(data_dir)                       # builds once, fast afterwards
    tfds.data_source("sklearn_digits", split="train", data_dir=data_dir)

Splits: a stratified split with seed 0 of exactly 1,500 train and 297 test images.
"""

import io
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

NAME = "sklearn_digits"
NUM_TRAIN = 1500
NUM_TEST = 297
SPLIT_SEED = 0


def digits_split_indices() -> dict[str, np.ndarray]:
    """Indices into `load_digits()` of the train and test split: {'train': [1500], 'test': [297]}.

    Stratified by label and seeded, so every build of the dataset holds the same images.
    """
    # scikit-learn is imported only when building: it adds ~1 s to `import vit_jax.data`.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    labels = load_digits().target
    train, test = train_test_split(
        np.arange(len(labels)),
        train_size=NUM_TRAIN,
        test_size=NUM_TEST,
        stratify=labels,
        random_state=SPLIT_SEED,
    )
    return {"train": np.sort(train), "test": np.sort(test)}


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of digits' pixels: image [h, w] float in 0..16 -> 8-bit grayscale in 0..255."""
    pixels = np.round(np.asarray(image, np.float64) * (255.0 / 16.0)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """tfds builder for scikit-learn's handwritten digits (registered as `sklearn_digits`)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Stratified 1,500 / 297 split of load_digits(), seed 0."}
    # tfds locates a builder's code (to look for download checksums) through
    # `importlib_resources`, which tfds 4.9.10 requires only on Python < 3.9
    # (tensorflow/datasets#11212); naming the file here skips that lookup.
    code_path = epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo is built directly: `dataset_info_from_configs` looks for metadata files
        # next to the builder's module, which this package does not ship.
        return tfds.core.DatasetInfo(
            builder=self,
            description="8x8 grayscale handwritten digits shipped with scikit-learn.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1), encoding_format="png"),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Nothing to download: the data ships with scikit-learn.
        indices = digits_split_indices()
        return {split: self._generate_examples(ids) for split, ids in indices.items()}

    def _generate_examples(self, indices: np.ndarray) -> Iterator[tuple[int, dict]]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        for i in indices:
            # The key (original index) fixes tfds' deterministic on-disk order.
            yield int(i), {"image": encode_png(digits.images[i]), "label": int(digits.target[i])}


def prepare(builder_class: type[tfds.core.GeneratorBasedBuilder], data_dir: str | None) -> None:
    """Builds the dataset of a builder that needs no download (the digits, the canvases of
    `vit_jax.data.canvas`) as array_record files in `data_dir` (None: tfds default) if missing.

    Idempotent and fast (reads one JSON file) when the dataset is already built.
    """
    builder = builder_class(data_dir=data_dir, file_format="array_record")
    if builder.is_prepared():
        return
    try:
        builder.download_and_prepare()
    except Exception:
        # Several processes sharing `data_dir` may race to build it; the loser's final rename
        # fails, yet the dataset is there.
        if not builder_class(data_dir=data_dir, file_format="array_record").is_prepared():
            raise


def prepare_digits(data_dir: str | None = None) -> None:
    """Builds `sklearn_digits` in `data_dir` (None: tfds default) if missing (`prepare`)."""
    prepare(SklearnDigits, data_dir)
