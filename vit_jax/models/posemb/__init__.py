"""Position embeddings: the registry of variants, one file each.

    learned.py      `learned`     table added to the tokens (official ViT)
    sincos.py       `sincos1d`, `sincos2d`   fixed sinusoids added to the tokens
    factorized.py   `factorized`  learned row and column tables
    relative.py     `relative`    learned bias per 2D offset on the attention logits
    rope.py         `rope_axial`, `rope_mixed`   rotary embeddings of queries and keys

The `posemb=` model field names one variant, or an additive and an attention one joined by "+"
("learned+rope_axial"). Each variant is a `base.Variant`: how it acts (added to the tokens, or
inside attention) and the `ParamRule` of each parameter it stores (shape inference and the
adaptation to another grid, used by `vit_jax.checkpoint` and by a model with
`dynamic_image_size`). On a grid other than the one it was trained on, a variant interpolates or
extrapolates as the model's `posemb_mode` says (`base.py`). Adding one: its file, one line in
`VARIANTS` below, and its tests.
"""

from __future__ import annotations

from vit_jax.models.posemb import factorized, learned, relative, rope, sincos
from vit_jax.models.posemb.base import (
    POSEMB_MODES,
    Layout,
    ParamRule,
    Position,
    Variant,
    axis_coordinates,
    grid_coordinates,
)
from vit_jax.models.posemb.factorized import factorized_table, resize_factorized
from vit_jax.models.posemb.learned import resize_posemb
from vit_jax.models.posemb.relative import extrapolate_bias_table, resize_bias_table
from vit_jax.models.posemb.sincos import sincos1d, sincos2d
from vit_jax.options import unknown_choice

NONE = Variant(name="none", doc="no position information (permutation-equivariant encoder)")

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        NONE,
        learned.VARIANT,
        sincos.SINCOS1D,
        sincos.SINCOS2D,
        factorized.VARIANT,
        relative.VARIANT,
        rope.AXIAL,
        rope.MIXED,
    )
}
ADDITIVE_POSEMBS = tuple(n for n, v in VARIANTS.items() if not v.acts_on_attention)
ATTENTION_POSEMBS = tuple(n for n, v in VARIANTS.items() if v.acts_on_attention)
POSEMBS = tuple(VARIANTS)


def param_rule(name: str) -> ParamRule | None:
    """The rule of the stored parameter with leaf name `name` (e.g. "pos_embedding"), found
    among the variants' parameters; None for a parameter no variant owns."""
    for variant in VARIANTS.values():
        for rule in variant.params:
            if rule.name == name:
                return rule
    return None


def split_posemb(posemb: str) -> tuple[Variant, Variant | None]:
    """'learned+rope_axial' -> (learned, rope_axial); 'relative' -> (none, relative).

    A position embedding is at most one additive variant plus at most one attention variant.
    """
    additive, attention = NONE, None
    for part in posemb.split("+"):
        variant = VARIANTS.get(part)
        if variant is None:
            raise ValueError(
                f"posemb={posemb!r} is not a valid position embedding: "
                f"{unknown_choice('variant', part, tuple(VARIANTS))} An additive and an attention "
                "variant may be joined with '+', e.g. 'learned+rope_axial'."
            )
        if variant is NONE and "+" not in posemb:
            continue
        if variant is NONE:
            others = "+".join(p for p in posemb.split("+") if p != NONE.name) or NONE.name
            raise ValueError(
                f"posemb={posemb!r}: 'none' means no position embedding and joins nothing; "
                f"write posemb={others!r}."
            )
        if not variant.acts_on_attention and additive is NONE and variant is not NONE:
            additive = variant
        elif variant.acts_on_attention and attention is None:
            attention = variant
        else:
            raise ValueError(
                f"posemb={posemb!r} is not a valid position embedding: join at most one "
                f"additive variant {ADDITIVE_POSEMBS[1:]} and one attention variant "
                f"{ATTENTION_POSEMBS} with '+', e.g. 'learned+rope_axial'."
            )
    return additive, attention


def check(model) -> None:
    """Raises ValueError if `model.posemb` cannot be built with the model's other fields."""
    for variant in split_posemb(model.posemb):
        if variant is not None:
            variant.check(model)


__all__ = [
    "ADDITIVE_POSEMBS",
    "ATTENTION_POSEMBS",
    "NONE",
    "POSEMBS",
    "POSEMB_MODES",
    "VARIANTS",
    "Layout",
    "ParamRule",
    "Position",
    "Variant",
    "axis_coordinates",
    "check",
    "extrapolate_bias_table",
    "factorized_table",
    "grid_coordinates",
    "param_rule",
    "resize_bias_table",
    "resize_factorized",
    "resize_posemb",
    "sincos1d",
    "sincos2d",
    "split_posemb",
]
