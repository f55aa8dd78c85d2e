"""Classify images with a checkpoint: `python -m vit_jax.predict --checkpoint SOURCE IMAGE...`
(also the `vit-predict` script).

    python -m vit_jax.predict --checkpoint augreg:B/16-i21k+i1k cat.jpg dog.png
    python -m vit_jax.predict --checkpoint workdirs/digits --top 3 digit.png

SOURCE is a published name, an http(s):// or gs:// URL, or a workdir, step directory, .npz or
Flax msgpack file. For each image: its file name, then the top classes, one per line, with
their probability, index and name:

    cat.jpg
      0.8123  281  tabby, tabby cat
      0.0712  282  tiger cat

Sizes: `--fit resize` (default) resizes each image to the checkpoint's resolution; `--fit adapt`
runs the checkpoint at each image's own resolution instead (rounded down to whole patches; a
side shorter than one patch is enlarged to one, with a note on stderr; the position embedding is
resized as for init_from); `--image-size N` or `HxW` runs it at that
resolution, images resized to it. Pixels are scaled to [-1, 1], as in training.

Class names are those stored with the checkpoint (a training run stores its dataset's), those of
a published ImageNet-1k checkpoint, or ImageNet-1k's for a 1000-class file without a stored
config; otherwise only indices are shown. Images are all read before the checkpoint is: an
unreadable image or a missing checkpoint is one `error: ...` line, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

FITS = ("resize", "adapt")
BATCH = 32  # images per forward pass


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from vit_jax.tools import ArgumentParser

    parser = ArgumentParser(prog="python -m vit_jax.predict", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint", required=True, help="published name, URL, workdir, step dir or file"
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--top", type=int, default=5, help="classes shown per image (5)")
    parser.add_argument(
        "--fit",
        choices=FITS,
        default="resize",
        help="resize: images to the checkpoint's resolution; adapt: the checkpoint to each "
        "image's resolution",
    )
    parser.add_argument(
        "--image-size",
        type=_image_size,
        help="run the checkpoint at this resolution, N or HxW (images resized to it)",
    )
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top must be at least 1, got {args.top}")
    return args


def _image_size(text: str) -> tuple[int, int]:
    try:
        size = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        size = ()
    if len(size) not in (1, 2) or min(size) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not N or HxW, e.g. 384 or 224x160")
    return (size[0], size[-1])


def read_images(files: Sequence[str]) -> list[np.ndarray]:
    """uint8 [h, w, c] of each file (c = 1 for grayscale, else 3); raises UnreadableImageError
    (a ValueError) naming the first file that cannot be read."""
    from vit_jax.data.transforms import decode_image

    return [decode_image(f, rgb=False, where=f) for f in files]


def model_size(image: np.ndarray, patch: tuple[int, int]) -> tuple[int, int]:
    """The resolution that runs `image` [h, w, c] as it is: h and w rounded down to whole
    patches (at least one)."""
    return tuple(max(n // p, 1) * p for n, p in zip(image.shape[:2], patch, strict=True))


def enlarged_note(name: str, image: np.ndarray, patch: tuple[int, int]) -> str | None:
    """The note `--fit adapt` prints for an image with a side shorter than one patch (it runs
    enlarged to one patch there), else None."""
    shape = tuple(image.shape[:2])
    size = model_size(image, patch)
    if all(n >= p for n, p in zip(shape, patch, strict=True)):
        return None
    return (
        f"note: {name} is {shape[0]}x{shape[1]} pixels, smaller than one {patch[0]}x{patch[1]} "
        f"patch; it runs enlarged to {size[0]}x{size[1]}."
    )


def model_input(image: np.ndarray, size: tuple[int, int], channels: int) -> np.ndarray:
    """The model's input for one image: float32 [H, W, channels] in [-1, 1], the whole image
    resized to `size` (H, W)."""
    from PIL import Image

    from vit_jax.data.transforms import crop_and_resize, to_model_range

    if channels == 1 and image.shape[-1] == 3:
        image = np.asarray(Image.fromarray(image).convert("L"))[..., None]
    elif channels == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return to_model_range(crop_and_resize(image, (0, 0, *image.shape[:2]), size))


def predict_logits(checkpoint, images: list[np.ndarray], fit: str, size=None) -> np.ndarray:
    """Logits [len(images), num_classes] of the checkpoint's model for each image (a per-patch
    model, classifier="unpooled": [len(images), patches, num_classes]), at `size` (H, W), else
    as `fit` says. The stored parameters are read once and adapted to each
    resolution that is needed."""
    import jax

    from vit_jax.checkpoint import adapt_params, load_params

    stored_model = checkpoint.model()
    if not stored_model.num_classes:
        raise ValueError(
            f"{checkpoint.path} has no classification head (num_classes=0): it gives features, "
            "not classes. Fine-tune it on labelled images first (init_from)."
        )
    patch, stored_size = stored_model.patch_size, tuple(stored_model.image_size)
    sizes = [size or (model_size(im, patch) if fit == "adapt" else stored_size) for im in images]
    stored, meta = load_params(checkpoint.path)
    logits = [None] * len(images)
    for target in dict.fromkeys(sizes):
        model = checkpoint.model(image_size=target)
        params, _ = adapt_params(stored, model, jax.random.key(0), meta=meta)
        apply = jax.jit(lambda p, x, model=model: model.apply({"params": p}, x))
        chosen = [i for i, s in enumerate(sizes) if s == target]
        for start in range(0, len(chosen), BATCH):
            ids = chosen[start : start + BATCH]
            batch = np.stack([model_input(images[i], target, checkpoint.channels) for i in ids])
            for i, row in zip(ids, np.asarray(apply(params, batch)), strict=True):
                logits[i] = row
    return np.stack(logits).astype(np.float64)


def top_classes(logits: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k most probable classes of logits [num_classes]: [(index, probability)], most
    probable first (ties: lower index first)."""
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")[:k]
    return [(int(i), float(probs[i])) for i in order]


def format_prediction(
    name: str, top: list[tuple[int, float]], class_names: Sequence[str] | None
) -> str:
    """The file name, then one line per class: probability, index, name."""
    width = max(len(str(i)) for i, _ in top)
    lines = [name]
    for index, prob in top:
        label = f"  {class_names[index]}" if class_names else ""
        lines.append(f"  {prob:.4f}  {index:>{width}}{label}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the top classes of each image; returns the exit status (2: a user error)."""
    from vit_jax.train.stopping import user_error

    args = parse_args(argv)
    try:
        images = read_images(args.images)  # all of them, before the checkpoint
        from vit_jax.checkpoint import open_checkpoint

        checkpoint = open_checkpoint(args.checkpoint)
        if checkpoint.model().classifier == "unpooled":
            raise ValueError(
                f"{args.checkpoint} holds a per-patch (segmentation) model, "
                "classifier='unpooled': it predicts a class for every patch, not for the "
                "image. vit-predict ranks an image's classes; for the per-patch logits, call "
                "vit_jax.predict.predict_logits from Python."
            )
        if args.fit == "adapt" and args.image_size is None:
            patch = checkpoint.model().patch_size
            for name, image in zip(args.images, images, strict=True):
                if note := enlarged_note(name, image, patch):
                    print(note, file=sys.stderr)
        logits = predict_logits(checkpoint, images, args.fit, args.image_size)
    except (ValueError, FileNotFoundError) as e:
        return user_error(e)
    for name, row in zip(args.images, logits, strict=True):
        top = top_classes(row, min(args.top, row.shape[-1]))
        print(format_prediction(name, top, checkpoint.class_names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
