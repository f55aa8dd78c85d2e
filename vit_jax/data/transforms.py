"""Per-example image transforms in numpy and Pillow (they run in the loader's workers).

Images are uint8 HWC arrays `[h, w, c]` with c = 1 (grayscale) or 3 (RGB) until the last step,
`to_model_range`, which gives the model's float32 input in [-1, 1]. Crop boxes are
`(top, left, height, width)` in pixels. Random functions take a `np.random.Generator` (grain
hands each record its own), so augmentation is reproducible from the pipeline seed.
"""

import io
import math
import os

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # (top, left, height, width)


class UnreadableImageError(ValueError):
    """An image file or record that Pillow cannot decode; `where` names the file or record."""

    def __init__(self, where: str, cause: BaseException | str, fix: str = ""):
        reason = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"cannot read image {where}: {reason}" + (f"; {fix}" if fix else ""))
        self.where, self.reason, self.fix = where, reason, fix

    def __reduce__(self):  # from a loader worker process to the run, intact
        return type(self), (self.where, self.reason, self.fix)


# What to do about an unreadable image of a dataset being trained on or evaluated.
DATASET_IMAGE_FIX = (
    "replace or delete it, or set --config.data.bad_image=skip to train and evaluate without "
    "the images that cannot be read"
)


# What Pillow raises on missing, truncated, corrupt or oversized images.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


# Pillow's modes of 16-bit grayscale (a 16-bit PNG opens as "I;16" or "I"): values 0-65535
# ("I", 32-bit, holding values up to 255 is read as 8-bit)
WIDE_GRAY = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def decode_image(
    data: bytes | str | os.PathLike, *, rgb: bool, where: str, fix: str = ""
) -> np.ndarray:
    """Decodes encoded bytes or a file path to uint8 `[h, w, c]`.

    With `rgb` every image becomes 3 channels; otherwise grayscale stays `[h, w, 1]` and all other
    modes become RGB. 16-bit grayscale is scaled to 8 bits (value / 257). Raises
    `UnreadableImageError` naming `where` (and saying `fix`) if Pillow cannot decode it.
    """
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            if image.mode in WIDE_GRAY:  # Pillow's convert would clip every value above 255
                array = np.asarray(image, np.float64)
                if image.mode != "I" or array.max(initial=0) > 255:  # "I" may hold 8-bit values
                    array = np.rint(array / 257)
                array = array.clip(0, 255).astype(np.uint8)
                array = array if not rgb else np.repeat(array[..., None], 3, axis=-1)
            else:
                keep_gray = not rgb and image.mode in ("L", "1")
                array = np.asarray(image.convert("L" if keep_gray else "RGB"))
    except _DECODE_ERRORS as error:
        raise UnreadableImageError(where, error, fix) from error
    return array[..., None] if array.ndim == 2 else array


def inception_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> Box:
    """Samples an "Inception" random-resized crop of an image of size `height` x `width`.

    The crop covers a fraction of the area uniform in `area_range` with aspect ratio (w / h)
    log-uniform in `aspect_range`; after `attempts` misses it falls back to the largest centered
    crop within `aspect_range` (as torchvision's RandomResizedCrop does).
    """
    log_aspect = (math.log(aspect_range[0]), math.log(aspect_range[1]))
    for _ in range(attempts):
        area = height * width * rng.uniform(*area_range)
        aspect = math.exp(rng.uniform(*log_aspect))
        crop_w = round(math.sqrt(area * aspect))
        crop_h = round(math.sqrt(area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return top, left, crop_h, crop_w
    aspect = min(max(width / height, aspect_range[0]), aspect_range[1])
    crop_w = min(width, round(height * aspect))
    crop_h = min(height, round(width / aspect))
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def center_crop_box(height: int, width: int, fraction: float) -> Box:
    """The centered crop keeping `fraction` of each side (1.0: the whole image)."""
    crop_h = max(1, round(height * fraction))
    crop_w = max(1, round(width * fraction))
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def crop_and_resize(
    image: np.ndarray, box: Box, size: tuple[int, int], *, nearest: bool = False
) -> np.ndarray:
    """Crops `box` from uint8 `[h, w, c]` and resizes it to `size` = (H, W): uint8 `[H, W, c]`.

    Bilinear; Pillow widens the filter when shrinking, so downsampling is antialiased. With
    `nearest`, each output pixel takes the value of the source pixel under its centre (for
    class maps: no value is blended). Cropping and resizing in one call avoids copying the crop.
    """
    top, left, crop_h, crop_w = box
    if (crop_h, crop_w) == tuple(size) == image.shape[:2]:
        return image
    channels = image.shape[-1]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    out = pil.resize(
        (size[1], size[0]),  # Pillow sizes are (width, height).
        resample=Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR,
        box=(left, top, left + crop_w, top + crop_h),
    )
    array = np.asarray(out)
    return array[..., None] if channels == 1 else array


def flip_left_right(image: np.ndarray) -> np.ndarray:
    """Mirrors `[h, w, c]` along the width axis."""
    return image[:, ::-1]


def to_model_range(image: np.ndarray) -> np.ndarray:
    """uint8 `[h, w, c]` in 0..255 -> float32 `[h, w, c]` in [-1, 1], the model's input range."""
    return image.astype(np.float32) * np.float32(2 / 255) - np.float32(1)
