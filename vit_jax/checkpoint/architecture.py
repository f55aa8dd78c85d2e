"""What model a stored parameter tree is: sizes, patch grid, position embedding and head.

Read from the shapes alone (so it works on an official .npz), refined by the model config stored
with the checkpoint when there is one (it fixes what shapes cannot tell: a non-square grid, or
sinusoidal vs. no position embedding). Used to adapt a checkpoint (checkpoint/adapt.py) and to
describe one (`python -m vit_jax.tools.inspect`).
"""

from __future__ import annotations

import dataclasses
import math
import re

from flax import traverse_util

from vit_jax import models
from vit_jax.models import relpos

POSEMB_KEY = "Transformer/posembed_input/pos_embedding"
ROW_KEY = "Transformer/posembed_input/row_embedding"
COL_KEY = "Transformer/posembed_input/col_embedding"
BLOCK0 = "Transformer/encoderblock_0/"
ATTENTION0 = BLOCK0 + "MultiHeadDotProductAttention_1/"
RELPOS_LEAF = "relative_position_bias_table"
_BLOCK = re.compile(r"^Transformer/encoderblock_(\d+)/")


def block_pattern(key: str) -> str:
    """'Transformer/encoderblock_3/LayerNorm_0/scale' -> 'Transformer/encoderblock_*/...': the
    name under which listings show the same parameter of every block once."""
    return re.sub(r"encoderblock_\d+", "encoderblock_*", key)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A stored ViT as far as its parameters (and config, if any) tell.

    grid: patch grid (h, w); None if neither the config nor the shapes tell it.
    posemb_prefix_tokens: class-token rows of a learned `pos_embedding` (1: official layout with
      a class slot, 0: big_vision layout), None without a learned embedding.
    relpos_prefix: 1 if relative bias tables have the 3 class-token rows.
    posemb: the model's posemb string when a config says, else what parameters show
      ("learned", "factorized", "+relative", "+rope_mixed"; "fixed or none" if nothing is stored).
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    patch_size: tuple[int, int]
    channels: int
    grid: tuple[int, int] | None
    posemb: str
    posemb_prefix_tokens: int | None
    relpos_prefix: int
    classifier: str
    num_classes: int
    representation_size: int | None

    @property
    def variant(self) -> str:
        """Zoo string such as "B/16" or "S/16x8"; sizes outside the zoo are spelled out."""
        ph, pw = self.patch_size
        patch = f"{ph}" if ph == pw else f"{ph}x{pw}"
        sizes = (self.hidden_size, self.num_layers, self.num_heads, self.mlp_dim)
        for name, size in models.SIZES.items():
            if dataclasses.astuple(size) == sizes:
                return f"{name}/{patch}"
        return (
            f"custom/{patch} (hidden_size={self.hidden_size}, num_layers={self.num_layers}, "
            f"num_heads={self.num_heads}, mlp_dim={self.mlp_dim})"
        )

    def summary(self) -> str:
        """One line, e.g. "B/16, learned posemb with class slot, token classifier, 1000 classes,
        grid 14x14"."""
        posemb = f"{self.posemb} posemb"
        if self.posemb_prefix_tokens is not None:
            posemb += " with class slot" if self.posemb_prefix_tokens else " without class slot"
        parts = [self.variant, posemb, f"{self.classifier} classifier"]
        parts.append(f"{self.num_classes} classes" if self.num_classes else "no head")
        if self.representation_size:
            parts.append(f"pre_logits {self.representation_size}")
        parts.append(f"grid {self.grid[0]}x{self.grid[1]}" if self.grid else "grid unknown")
        return ", ".join(parts)


def stored_model(config: dict | None) -> models.VisionTransformer | None:
    """The model a checkpoint's config describes ({"model": {...}}), or None if there is none or
    it cannot be built (then shapes alone are used)."""
    fields = dict((config or {}).get("model") or {})
    if "variant" not in fields:
        return None
    if fields.get("num_classes") is None:
        fields["num_classes"] = 0
    try:
        return models.build(fields)
    except (ValueError, TypeError):
        return None


def infer(
    shapes: dict,
    meta: dict,
    old_grid: tuple[int, int] | None = None,
    likely_grid: tuple[int, int] | None = None,
) -> Architecture:
    """The Architecture of a per-block parameter tree `shapes` (leaves with .shape).

    meta: from load_params / checkpoint_shapes (its `config` and `posemb_prefix_tokens` are used).
    The stored grid is, in this order: `old_grid`; the config's; that of factorized tables;
    `likely_grid` (the grid of the model being restored) if it fits the stored shapes; the square
    that the learned embedding or the bias table has.
    """
    flat = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes, sep="/").items()}
    model = stored_model(meta.get("config"))
    ph, pw, channels, hidden = flat["embedding/kernel"]
    blocks = {int(m.group(1)) for k in flat if (m := _BLOCK.match(k))}
    grid = tuple(old_grid) if old_grid else (model.grid if model else _grid_from_tables(flat))
    if grid is None and likely_grid is not None and _fits(flat, tuple(likely_grid)):
        grid = tuple(likely_grid)
    posemb_prefix = _posemb_prefix(flat, meta, model, grid)
    if grid is None and POSEMB_KEY in flat:
        grid = _square(flat[POSEMB_KEY][1] - posemb_prefix)
    relpos_rows = flat.get(ATTENTION0 + RELPOS_LEAF)
    if grid is None and relpos_rows:
        grid = _grid_from_relpos(relpos_rows[0])
    return Architecture(
        hidden_size=hidden,
        num_layers=len(blocks),
        num_heads=flat[ATTENTION0 + "query/kernel"][1] if blocks else 0,
        mlp_dim=flat[BLOCK0 + "MlpBlock_3/Dense_0/kernel"][1] if blocks else 0,
        patch_size=(ph, pw),
        channels=channels,
        grid=grid,
        posemb=model.posemb if model else _posemb_from_shapes(flat),
        posemb_prefix_tokens=posemb_prefix,
        # (2H-1)(2W-1) is odd: an even row count means 3 class-token rows follow.
        relpos_prefix=int(bool(relpos_rows) and relpos_rows[0] % 2 == 0),
        classifier=model.classifier if model else _classifier(flat),
        num_classes=flat["head/bias"][0] if "head/bias" in flat else 0,
        representation_size=flat["pre_logits/bias"][0] if "pre_logits/bias" in flat else None,
    )


def _grid_from_tables(flat: dict) -> tuple[int, int] | None:
    """(h, w) from factorized row/column tables, the one stored layout that tells a non-square
    grid."""
    if ROW_KEY in flat and COL_KEY in flat:
        return (flat[ROW_KEY][0], flat[COL_KEY][0])
    return None


def _fits(flat: dict, grid: tuple[int, int]) -> bool:
    """Whether the grid-dependent stored shapes are those of `grid`."""
    if POSEMB_KEY in flat:
        class_rows = (0, 1) if "cls" in flat else (0,)
        return flat[POSEMB_KEY][1] - grid[0] * grid[1] in class_rows
    if ATTENTION0 + RELPOS_LEAF in flat:
        rows = flat[ATTENTION0 + RELPOS_LEAF][0]
        return rows in (relpos.num_relative_positions(grid, p) for p in (0, 1))
    return True


def _square(n: int) -> tuple[int, int] | None:
    side = math.isqrt(max(n, 0))
    return (side, side) if side and side * side == n else None


def _grid_from_relpos(rows: int) -> tuple[int, int] | None:
    """Square grid of a bias table with (2H-1)² rows, plus 3 if it has class-token rows."""
    offsets = _square(rows - 3 * (rows % 2 == 0))
    return None if offsets is None else ((offsets[0] + 1) // 2,) * 2


def _posemb_prefix(flat: dict, meta: dict, model, grid) -> int | None:
    """Class-token rows of the stored learned position embedding."""
    if POSEMB_KEY not in flat:
        return None
    if model is not None:
        return model.num_prefix if model.posemb_cls_slot else 0
    if meta.get("posemb_prefix_tokens") is not None:
        return meta["posemb_prefix_tokens"]
    rows = flat[POSEMB_KEY][1]
    if grid is not None:
        return rows - grid[0] * grid[1]
    return 1 if "cls" in flat else 0  # the official layout: a class token has a slot


def _posemb_from_shapes(flat: dict) -> str:
    additive = "fixed or none"
    if POSEMB_KEY in flat:
        additive = "learned"
    elif ROW_KEY in flat:
        additive = "factorized"
    for leaf, name in ((RELPOS_LEAF, "relative"), ("rope_frequencies", "rope_mixed")):
        if ATTENTION0 + leaf in flat:
            return name if additive == "fixed or none" else f"{additive}+{name}"
    return additive


def _classifier(flat: dict) -> str:
    if "cls" in flat:
        return "token"
    return "map" if any(k.startswith("MAPHead_0/") for k in flat) else "gap"
