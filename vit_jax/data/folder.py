"""A dataset from a folder of images: `root/<class_name>/*.{jpg,jpeg,png}`.

Classes are the sorted names of the subfolders of the training folder; label i is the i-th name.
Extensions match case-insensitively; other files and hidden files are ignored. Every image is
returned as RGB (grayscale becomes 3 channels).

The evaluation split is either a second folder with the same layout (its class names must be
training classes) or, without one, a deterministic stratified held-out fraction of the training
folder (`split_held_out`).

Unreadable images (corrupt, truncated, deleted) are found only when read, mid-epoch, since
checking every file up front would cost a full pass over the data. `ImageFolderSource` raises
`UnreadableImageError` naming the file; wrap it in `SkipUnreadable` to drop such images instead
(the loaders do this for the config choice `bad_image='skip'`, and keep the error for 'stop').
"""

import dataclasses
import logging
import os
from collections.abc import Sequence

import numpy as np

from vit_jax.data.options import DataOptions
from vit_jax.data.transforms import DATASET_IMAGE_FIX, UnreadableImageError, decode_image
from vit_jax.options import options_of

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_log = logging.getLogger(__name__)
_LAYOUT = "root/<class_name>/<image>.jpg|.jpeg|.png"
EVAL_FRACTION = next(o for o in options_of(DataOptions) if o.name == "eval_fraction")


@dataclasses.dataclass(frozen=True)
class FolderIndex:
    """File paths with their integer labels, and the class names that the labels index."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]


def _class_dirs(root: str) -> list[str]:
    if not os.path.exists(root):
        raise ValueError(f"Image folder {root!r} does not exist; expected the layout {_LAYOUT}.")
    if not os.path.isdir(root):
        raise ValueError(f"Image folder {root!r} is not a directory; expected {_LAYOUT}.")
    names = sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not names:
        raise ValueError(
            f"Image folder {root!r} has no class subfolders; expected {_LAYOUT} "
            "(one subfolder per class)."
        )
    return names


def _images_in(directory: str) -> list[str]:
    return sorted(
        entry.path
        for entry in os.scandir(directory)
        if entry.is_file()
        and not entry.name.startswith(".")
        and entry.name.lower().endswith(IMAGE_EXTENSIONS)
    )


def scan_folder(root: str, classes: Sequence[str] | None = None) -> FolderIndex:
    """Lists the images of `root/<class_name>/`, sorted by class then file name.

    With `classes` (the training classes, for an evaluation folder) labels index that list and a
    subfolder not in it is an error; otherwise the classes are `root`'s sorted subfolders.
    Raises ValueError, naming `root`, for a missing folder, no class subfolders or no images.
    """
    names = _class_dirs(root)
    if classes is None:
        classes = names
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise ValueError(
            f"Image folder {root!r} has class subfolders {unknown} that are not among the "
            f"training classes {list(classes)}."
        )
    paths, labels = [], []
    for name in names:
        files = _images_in(os.path.join(root, name))
        paths += files
        labels += [classes.index(name)] * len(files)
    if not paths:
        raise ValueError(
            f"Image folder {root!r} contains no images with extension {'/'.join(IMAGE_EXTENSIONS)} "
            f"(any case) in its class subfolders; expected {_LAYOUT}."
        )
    return FolderIndex(tuple(paths), tuple(labels), tuple(classes))


def split_held_out(
    index: FolderIndex, fraction: float, seed: int
) -> tuple[FolderIndex, FolderIndex]:
    """Splits `index` into (train, held-out): `fraction` of every class, chosen with `seed`.

    Per class, round(fraction * class size) images are held out, so the split is stratified and
    the same for the same folder contents, fraction and seed.
    """
    fraction = EVAL_FRACTION.check(fraction)
    labels = np.asarray(index.labels)
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), bool)
    for label in range(len(index.classes)):
        members = np.flatnonzero(labels == label)
        held[rng.permutation(members)[: round(fraction * len(members))]] = True

    def subset(mask: np.ndarray) -> FolderIndex:
        ids = np.flatnonzero(mask)
        return FolderIndex(
            tuple(index.paths[i] for i in ids), tuple(index.labels[i] for i in ids), index.classes
        )

    return subset(~held), subset(held)


class ImageFolderSource:
    """Random-access source over a `FolderIndex`: `source[i]` = {'image', 'label'}.

    'image' is uint8 `[h, w, 3]` (RGB, the file's own size) and 'label' an int. An unreadable file
    raises `UnreadableImageError` naming it.
    """

    def __init__(self, index: FolderIndex):
        self.index = index

    def __len__(self) -> int:
        return len(self.index.paths)

    def __getitem__(self, i: int) -> dict:
        path = self.index.paths[i]
        image = decode_image(path, rgb=True, where=path, fix=DATASET_IMAGE_FIX)
        return {"image": image, "label": self.index.labels[i]}

    def __repr__(self) -> str:
        return f"ImageFolderSource({len(self)} images, {len(self.index.classes)} classes)"


class SkipUnreadable:
    """Wraps a source so that an unreadable image gives None (grain drops it) instead of an error.

    Each skip logs a warning naming the file; `num_skipped` counts the skips of this instance
    (with worker processes every worker counts its own, and the warning shows that count).
    """

    def __init__(self, source: Sequence[dict]):
        self.source = source
        self.num_skipped = 0

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict | None:
        try:
            return self.source[i]
        except UnreadableImageError as error:
            self.num_skipped += 1
            _log.warning("Skipped (%d so far in this process): %s", self.num_skipped, error)
            return None
