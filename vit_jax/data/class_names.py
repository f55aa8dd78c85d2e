"""Class names, label i -> name: ImageNet-1k's ship with the package; WordNet IDs become words.

    imagenet2012()[281]                 # 'tabby, tabby cat'
    readable(("n01440764", "cat"))      # ('tench, Tinca tinca', 'cat')

`imagenet2012_classes.txt` (package data) holds the 1,000 ImageNet-1k classes in label order
(the sorted WordNet IDs of tfds's `imagenet2012`), each with its WordNet lemmas.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

IMAGENET2012 = "imagenet2012"
_FILE = "imagenet2012_classes.txt"


def imagenet2012_table() -> dict[str, str]:
    """{WordNet ID: lemmas} of the 1,000 ImageNet-1k classes, in label order."""
    text = resources.files(__package__).joinpath(_FILE).read_text(encoding="utf-8")
    rows = (line.split("\t", 1) for line in text.splitlines() if line and line[0] != "#")
    return {wnid: lemmas for wnid, lemmas in rows}


def imagenet2012() -> tuple[str, ...]:
    """The ImageNet-1k class names (WordNet lemmas, e.g. 'tench, Tinca tinca'): [1000]."""
    return tuple(imagenet2012_table().values())


def readable(names: Sequence[str]) -> tuple[str, ...]:
    """`names` with ImageNet WordNet IDs (tfds imagenet2012's label names) replaced by words."""
    table = imagenet2012_table()
    return tuple(table.get(name, name) for name in names)
