"""Two position tasks drawn from the embedded digits on a 16x16 canvas, built like them.

Each canvas is grayscale with background 0 and holds 8x8 digits of scikit-learn's digits at
integer offsets. The digits come from the split of `sklearn_digits` (`digits_split_indices`):
a test canvas holds test digits only. One canvas per digit of the split (1,500 train, 297
test), drawn with a fixed seed, so every build holds the same images.

    digits_position      one digit at top 0..8 and left in 0..3 or 5..8 (never centred);
                         label = digit + 10 * (left >= 5): the digit and the half of the
                         canvas it is in ("3 right"). A model without position information
                         can tell the digit but not the side. Train it with data.flip=False:
                         a flip moves the digit to the other side without changing its label.
    digits_segmentation  two digits whose 8x8 boxes do not overlap; 'segmentation' uint8
                         [16, 16, 1] holds each pixel's class: the digit of the box covering
                         it, or 10 (background). 'label' is the first digit's class; the
                         per-pixel map is what is trained on (`DatasetInfo.dense_labels`).

    prepare(DigitsSegmentation, data_dir)     # built on first use by the loaders too
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from vit_jax.data.digits import digits_split_indices, encode_png

NAME_POSITION = "digits_position"
NAME_SEGMENTATION = "digits_segmentation"
CANVAS = 16  # canvas side, pixels
DIGIT = 8  # digit side, pixels
BACKGROUND = 10  # the segmentation class of pixels outside every digit's box
SEED = 0
SPLITS = ("train", "test")
POSITION_CLASSES = tuple(f"{d} left" for d in range(10)) + tuple(f"{d} right" for d in range(10))
SEGMENTATION_CLASSES = tuple(str(d) for d in range(10)) + ("background",)

OFFSETS = range(CANVAS - DIGIT + 1)  # top and left of a digit's box: 0..8
POSITION_LEFTS = (0, 1, 2, 3, 5, 6, 7, 8)  # never 4: centred
RIGHT_HALF = 5  # a box with left >= 5 has its centre in the right half


@dataclasses.dataclass(frozen=True)
class Placement:
    """One digit on a canvas: `digit` indexes `load_digits()`; its box's top-left corner."""

    digit: int
    top: int
    left: int


def overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether the 8x8 boxes with top-left corners `a` and `b` (top, left) share a pixel."""
    return abs(a[0] - b[0]) < DIGIT and abs(a[1] - b[1]) < DIGIT


def position_label(placement: Placement, digit_label: int) -> int:
    """The `digits_position` class: the digit, plus 10 if its box is in the right half."""
    return digit_label + 10 * (placement.left >= RIGHT_HALF)


def _corners(lefts: Sequence[int] = OFFSETS) -> list[tuple[int, int]]:
    return list(itertools.product(OFFSETS, lefts))


def layouts(name: str, split: str) -> list[tuple[Placement, ...]]:
    """The placements of every canvas of dataset `name`'s `split` ('train' or 'test'), in
    order: canvas i holds digit i of the split first; `digits_segmentation` adds a second
    digit drawn from the same split, the pair of boxes uniform among non-overlapping ones."""
    indices = digits_split_indices()[split]
    rng = np.random.default_rng([SEED, SPLITS.index(split)])
    if name == NAME_POSITION:
        corners = _corners(POSITION_LEFTS)
        return [(Placement(int(i), *corners[rng.integers(len(corners))]),) for i in indices]
    pairs = [(a, b) for a in _corners() for b in _corners() if not overlap(a, b)]
    out = []
    for i in indices:
        other = int(indices[rng.integers(len(indices))])
        first, second = pairs[rng.integers(len(pairs))]
        out.append((Placement(int(i), *first), Placement(other, *second)))
    return out


def draw(placements: Sequence[Placement], images: np.ndarray) -> np.ndarray:
    """The canvas [16, 16] (float, digits' 0..16) with `images[p.digit]` [8, 8] pasted at each
    placement (boxes must not overlap)."""
    canvas = np.zeros((CANVAS, CANVAS), images.dtype)
    for p in placements:
        canvas[p.top : p.top + DIGIT, p.left : p.left + DIGIT] = images[p.digit]
    return canvas


def segment(placements: Sequence[Placement], labels: np.ndarray) -> np.ndarray:
    """The per-pixel classes uint8 [16, 16]: `labels[p.digit]` inside each box, else 10."""
    classes = np.full((CANVAS, CANVAS), BACKGROUND, np.uint8)
    for p in placements:
        classes[p.top : p.top + DIGIT, p.left : p.left + DIGIT] = labels[p.digit]
    return classes


class _Canvases(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """What the two canvas builders share: splits, generation from `layouts`, no download."""

    VERSION = tfds.core.Version("1.0.0")
    # As for `SklearnDigits`: naming the file skips tfds' lookup of the builder's code.
    code_path = epath.Path(__file__)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Nothing to download: the digits ship with scikit-learn.
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        for key, placements in enumerate(layouts(self.name, split)):
            yield key, self._example(placements, digits.images, digits.target)

    def _example(self, placements, images: np.ndarray, labels: np.ndarray) -> dict:
        raise NotImplementedError


class DigitsPosition(_Canvases):
    """tfds builder of `digits_position`: which digit, and in which half of the canvas."""

    RELEASE_NOTES = {"1.0.0": "One digit per canvas, 20 classes (digit, side); seed 0."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="A digit on a 16x16 canvas; its class and the half it is in.",
            metadata=tfds.core.MetadataDict(flip_changes_label=True),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(CANVAS, CANVAS, 1), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=POSITION_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _example(self, placements, images, labels) -> dict:
        (placement,) = placements
        label = position_label(placement, int(labels[placement.digit]))
        return {"image": encode_png(draw(placements, images)), "label": label}


class DigitsSegmentation(_Canvases):
    """tfds builder of `digits_segmentation`: two digits, a class per pixel."""

    RELEASE_NOTES = {"1.0.0": "Two non-overlapping digits per canvas, 11 pixel classes; seed 0."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Two digits on a 16x16 canvas; each pixel's class (its box's digit).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(CANVAS, CANVAS, 1), encoding_format="png"),
                    "segmentation": tfds.features.Tensor(shape=(CANVAS, CANVAS, 1), dtype=np.uint8),
                    # The first digit's class; it carries the class names of the pixel classes.
                    "label": tfds.features.ClassLabel(names=SEGMENTATION_CLASSES),
                }
            ),
            supervised_keys=("image", "segmentation"),
        )

    def _example(self, placements, images, labels) -> dict:
        return {
            "image": encode_png(draw(placements, images)),
            "segmentation": segment(placements, labels)[..., None],
            "label": int(labels[placements[0].digit]),
        }


BUILDERS = {NAME_POSITION: DigitsPosition, NAME_SEGMENTATION: DigitsSegmentation}
