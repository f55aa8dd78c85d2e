"""Google's published ViT checkpoints by name, e.g. `augreg:B/16-i21k`, with the model each holds.

A name is COLLECTION:SIZE/PATCH-DATA, DATA being what it was trained on: `i21k` (ImageNet-21k,
21,843 classes, 224 px) or `i21k+i1k` (then fine-tuned on ImageNet-1k, 1,000 classes, 384 px;
`-224`: the 224 px fine-tune). The collections of google-research/vision_transformer:

- `augreg`: "How to train your ViT?" (Steiner et al. 2022), the recommended checkpoint of each
  size (the best ImageNet-21k upstream accuracy) and its ImageNet-1k fine-tune at 384 px.
- `vit`: the original paper's files (Dosovitskiy et al. 2021). Their ImageNet-21k heads were
  zeroed by the authors (for fine-tuning only) and they have a `pre_logits` layer.

The hybrids (R+Ti/16, R26+S/32, R50+L/32, R50+B/16) need a ResNet stem, which this package
does not have. Any other file of the buckets loads by URL (`gs://vit_models/...`).

    PUBLISHED["augreg:B/16-i21k"].url      # 'gs://vit_models/augreg/B_16-i21k-300ep-...npz'
    resolve("augreg:B/16-i21k")            # the same URL; any other source unchanged
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types

BUCKET = "gs://vit_models"
I21K_CLASSES = 21843
IMAGENET2012 = "imagenet2012"  # the class names of vit_jax.data.class_names.imagenet2012()


@dataclasses.dataclass(frozen=True)
class Published:
    """One published checkpoint: where it is and the model that it fits.

    class_names: the dataset whose class names its head predicts when this package ships them
      (IMAGENET2012), else None.
    """

    name: str
    url: str
    variant: str
    image_size: int
    num_classes: int
    representation_size: int | None = None
    classifier: str = "token"
    class_names: str | None = None
    note: str = ""

    def model_fields(self) -> dict:
        """The fields of `vit_jax.models.build` for the stored model."""
        return {
            "variant": self.variant,
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "classifier": self.classifier,
            "representation_size": self.representation_size,
        }


# AugReg's recommended checkpoints (the README of google-research/vision_transformer): the
# i21k recipe in the file name, and the learning rate of the ImageNet-1k fine-tune at 384 px.
_AUGREG = {
    "Ti/16": ("aug_none-wd_0.03", "0.03", "78.22%"),
    "S/32": ("aug_none-wd_0.1", "0.01", "79.58%"),
    "S/16": ("aug_light1-wd_0.03", "0.03", "83.73%"),
    "B/32": ("aug_light1-wd_0.1", "0.01", "83.59%"),
    "B/16": ("aug_medium1-wd_0.1", "0.03", "85.49%"),
    "L/16": ("aug_strong1-wd_0.1", "0.01", "85.59%"),
}
# The original files: the pre_logits width of the ImageNet-21k ones, and which ImageNet-1k
# fine-tunes exist (384 px; some also at 224 px).
_ORIGINAL_I21K = {"B/16": 768, "B/32": 768, "L/16": 1024, "L/32": 1024, "H/14": 1280}
_ORIGINAL_I1K = {"B/16": (384, 224), "B/32": (384,), "L/16": (384, 224), "L/32": (384,)}


def _augreg(variant: str, recipe: str, lr: str, top1: str) -> list[Published]:
    stem = f"{BUCKET}/augreg/{variant.replace('/', '_')}-i21k-300ep-lr_0.001-{recipe}-do_0.0-sd_0.0"
    return [
        Published(f"augreg:{variant}-i21k", f"{stem}.npz", variant, 224, I21K_CLASSES),
        Published(
            f"augreg:{variant}-i21k+i1k",
            f"{stem}--imagenet2012-steps_20k-lr_{lr}-res_384.npz",
            variant,
            384,
            1000,
            class_names=IMAGENET2012,
            note=f"ImageNet top-1 {top1}",
        ),
    ]


def _original(variant: str) -> list[Published]:
    stem = f"ViT-{variant.replace('/', '_')}"
    entries = [
        Published(
            f"vit:{variant}-i21k",
            f"{BUCKET}/imagenet21k/{stem}.npz",
            variant,
            224,
            I21K_CLASSES,
            representation_size=_ORIGINAL_I21K[variant],
            note="head zeroed by the authors: for fine-tuning only",
        )
    ]
    for size in _ORIGINAL_I1K.get(variant, ()):
        suffix = "" if size == 384 else f"-{size}"
        entries.append(
            Published(
                f"vit:{variant}-i21k+i1k{suffix}",
                f"{BUCKET}/imagenet21k+imagenet2012/{stem}{suffix}.npz",
                variant,
                size,
                1000,
                class_names=IMAGENET2012,
            )
        )
    return entries


def _registry() -> types.MappingProxyType:
    entries = [e for args in _AUGREG.items() for e in _augreg(args[0], *args[1])]
    entries += [e for variant in _ORIGINAL_I21K for e in _original(variant)]
    return types.MappingProxyType({e.name: e for e in entries})


PUBLISHED: types.MappingProxyType[str, Published] = _registry()
# Looks like a name (COLLECTION:...), not a URL (SCHEME://...) or a path.
_NAME = re.compile(r"^[A-Za-z][\w.-]*:(?!//)")


def resolve(source: str | os.PathLike) -> str:
    """The URL of a published name; any other source (a path, a URL) unchanged. A source that
    looks like a name (COLLECTION:...) but is neither published nor an existing path raises
    ValueError with the closest names."""
    source = os.fspath(source)
    if source in PUBLISHED:
        return PUBLISHED[source].url
    if _NAME.match(source) and not os.path.exists(source):
        close = difflib.get_close_matches(source, PUBLISHED, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise ValueError(
            f"{source!r} is not a published checkpoint name nor an existing path; {hint}"
            f"published names: {', '.join(PUBLISHED)}."
        )
    return source
