"""ViT models in Flax Linen. Start with `create("B/16", num_classes=..., image_size=...)`."""

from vit_jax.models.inspect import inspect
from vit_jax.models.scan import scan_params, unscan_params
from vit_jax.models.vit import (
    CLASSIFIERS,
    FIELDS,
    POSEMBS,
    VisionTransformer,
    build,
    create,
    split_posemb,
)
from vit_jax.models.zoo import SIZES, decode_variant

__all__ = [
    "CLASSIFIERS",
    "FIELDS",
    "POSEMBS",
    "SIZES",
    "VisionTransformer",
    "build",
    "create",
    "decode_variant",
    "inspect",
    "scan_params",
    "split_posemb",
    "unscan_params",
]
