"""ViT models in Flax Linen. Start with `create("B/16", num_classes=..., image_size=...)`.

vit.py            VisionTransformer, its blocks, create/build
zoo.py            published sizes ("B/16")
patch_embed.py    the patch embedding (conv or linear) and its kernel resize
posemb/           every position-embedding variant, one file each, and their registry
attention.py      attention with the hooks that attention-level variants use
resize.py         the one grid resampling every adaptation goes through
paths.py          names of the parameter tree
scan.py           per-block <-> scanned parameter layout
intermediates.py  attention maps and tokens per layer (`inspect`)
"""

from vit_jax.models.intermediates import inspect
from vit_jax.models.posemb import POSEMBS, split_posemb
from vit_jax.models.scan import scan_params, unscan_params
from vit_jax.models.vit import (
    CLASSIFIERS,
    FIELDS,
    VisionTransformer,
    build,
    create,
    model_fields,
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
    "model_fields",
    "scan_params",
    "split_posemb",
    "unscan_params",
]
