"""The model zoo: published ViT sizes, decoded from strings such as "B/16" or "S/16x8".

The size letter picks width, depth, heads and MLP width (Dosovitskiy et al. 2021, Table 1; "Ti"
from DeiT; "g", ViT-g, from Zhai et al. 2022, "Scaling Vision Transformers"). The
number after the slash is the patch size; "16x8" means 16 rows by 8 columns.

timm's names are read where they mean one thing here (`from_timm`, `TIMM_FIELDS`):
"vit_base_patch16_224" is "B/16" at image_size 224, drop_path_rate is stochastic_depth.
"""

from __future__ import annotations

import dataclasses
import re


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

# timm's size words (timm/models/vision_transformer.py): the same widths, depths and heads.
TIMM_SIZES = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H", "giant": "g"}
_TIMM_NAME = re.compile(rf"vit_({'|'.join(TIMM_SIZES)})_patch(\d+)_(\d+)")

# timm's argument names of the fields that mean the same here.
TIMM_FIELDS = {
    "drop_path_rate": "stochastic_depth",
    "attn_drop_rate": "attention_dropout_rate",
    "img_size": "image_size",
    "embed_dim": "hidden_size",
    "depth": "num_layers",
}


def from_timm(name: str) -> tuple[str, int] | None:
    """timm's model name -> (variant, image size): "vit_base_patch16_224" -> ("B/16", 224);
    None if `name` is not vit_{tiny,small,base,large,huge,giant}_patch{N}_{size}."""
    match = _TIMM_NAME.fullmatch(name)
    if match is None:
        return None
    size, patch, image = match.groups()
    return f"{TIMM_SIZES[size]}/{int(patch)}", int(image)


def decode_variant(variant: str) -> dict:
    """Turns "B/16" or "S/16x8" into model fields (hidden_size, ..., patch_size=(ph, pw))."""
    size, sep, patch = variant.partition("/")
    if size not in SIZES or not sep:
        raise ValueError(
            f"variant={variant!r} is not a known model: write SIZE/PATCH with SIZE one of "
            f"{sorted(SIZES)} and PATCH a number or ROWSxCOLS, e.g. 'B/16' or 'S/16x8'"
            f"{_timm_hint(variant)}."
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


def variant_name(
    hidden_size: int, num_layers: int, num_heads: int, mlp_dim: int, patch_size: tuple[int, int]
) -> str:
    """The inverse of `decode_variant`: "B/16" or "S/16x8"; sizes outside the zoo are spelled
    out: "custom/4 (hidden_size=96, num_layers=4, num_heads=4, mlp_dim=192)"."""
    ph, pw = patch_size
    patch = f"{ph}" if ph == pw else f"{ph}x{pw}"
    for name, size in SIZES.items():
        if size == Size(hidden_size, num_layers, num_heads, mlp_dim):
            return f"{name}/{patch}"
    return (
        f"custom/{patch} (hidden_size={hidden_size}, num_layers={num_layers}, "
        f"num_heads={num_heads}, mlp_dim={mlp_dim})"
    )


def _timm_hint(variant: str) -> str:
    """For a timm name given where only ours is read (a config's model.variant set in Python):
    which one it is, and where timm's names are read."""
    timm = from_timm(variant)
    if timm is None:
        return ""
    return (
        f" ({variant!r} is timm's name for {timm[0]!r} at image_size={timm[1]}: write "
        f"{timm[0]!r} here; models.create, --config.model.variant and a config's :ARG read "
        "timm's names)"
    )
