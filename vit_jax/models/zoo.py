"""The model zoo: published ViT sizes, decoded from strings such as "B/16" or "S/16x8".

The size letter picks width, depth, heads and MLP width (Dosovitskiy et al. 2021, Table 1; "Ti"
from DeiT; "g", ViT-g, from Zhai et al. 2022, "Scaling Vision Transformers"). The
number after the slash is the patch size; "16x8" means 16 rows by 8 columns.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Size:
    """Encoder dimensions of one published ViT size."""

    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int


SIZES: dict[str, Size] = {
    "Ti": Size(192, 12, 3, 768),
    "S": Size(384, 12, 6, 1536),
    "B": Size(768, 12, 12, 3072),
    "L": Size(1024, 24, 16, 4096),
    "H": Size(1280, 32, 16, 5120),
    "g": Size(1408, 40, 16, 6144),
}


def decode_variant(variant: str) -> dict:
    """Turns "B/16" or "S/16x8" into model fields (hidden_size, ..., patch_size=(ph, pw))."""
    size, sep, patch = variant.partition("/")
    if size not in SIZES or not sep:
        raise ValueError(
            f"variant={variant!r} is not a known model: write SIZE/PATCH with SIZE one of "
            f"{sorted(SIZES)} and PATCH a number or ROWSxCOLS, e.g. 'B/16' or 'S/16x8'."
        )
    try:
        parts = [int(p) for p in patch.split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise ValueError(
            f"variant={variant!r} has patch {patch!r}: the patch must be a positive number "
            "or ROWSxCOLS, e.g. '16' or '16x8'."
        )
    patch_size = (parts[0], parts[-1])
    return {**dataclasses.asdict(SIZES[size]), "patch_size": patch_size}
