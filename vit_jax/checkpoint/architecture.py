"""What model a stored parameter tree is: sizes, patch grid, position embedding and head.

Read from the shapes alone (so it works on an official .npz), refined by the model config stored
with the checkpoint when there is one (it fixes what shapes cannot tell: a non-square grid, or
sinusoidal vs. no position embedding). What each position parameter's shape tells comes from
its variant's rule (`vit_jax.models.posemb.param_rule`). Used to adapt a checkpoint
(checkpoint/adapt.py) and to describe one (`python -m vit_jax.tools.inspect`).
"""

from __future__ import annotations

import dataclasses

from vit_jax import models
from vit_jax.models import paths, zoo
from vit_jax.models.posemb import VARIANTS, ParamRule, learned, param_rule
from vit_jax.models.posemb.base import Grid, GridCandidate

_BLOCK0 = paths.join(paths.TRANSFORMER, paths.block_name(0))
_ATTENTION0 = paths.join(_BLOCK0, paths.BLOCK_ATTENTION)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A stored ViT as far as its parameters (and config, if any) tell.

    grid: patch grid (h, w); None if neither the config nor the shapes tell it.
    posemb_grid: the reference grid of its position embedding, the grid it was first trained on:
      the stored config's `posemb_grid`, else `grid` (a fine-tuned run whose config remembers
      the original grid gives that one).
    num_prefix_tokens: class-token rows of each stored grid parameter, by leaf name
      (e.g. {"pos_embedding": 1}: the official layout with a class slot; 0: big_vision's).
    posemb: the model's posemb string when a config says, else what parameters show
      ("learned", "factorized", "+relative", "+rope_mixed"; "fixed or none" if nothing is stored).
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    patch_size: tuple[int, int]
    channels: int
    grid: Grid | None
    posemb_grid: Grid | None
    posemb: str
    num_prefix_tokens: dict[str, int]
    classifier: str
    num_classes: int
    representation_size: int | None

    @property
    def variant(self) -> str:
        """Zoo string such as "B/16" or "S/16x8"; sizes outside the zoo are spelled out."""
        sizes = (self.hidden_size, self.num_layers, self.num_heads, self.mlp_dim)
        return zoo.variant_name(*sizes, self.patch_size)

    def summary(self) -> str:
        """One line, e.g. "B/16, learned posemb with class slot, token classifier, 1000 classes,
        grid 14x14"."""
        posemb = f"{self.posemb} posemb"
        slot = self.num_prefix_tokens.get(learned.PARAM)
        if slot is not None:
            posemb += " with class slot" if slot else " without class slot"
        parts = [self.variant, posemb, f"{self.classifier} classifier"]
        parts.append(f"{self.num_classes} classes" if self.num_classes else "no head")
        if self.representation_size:
            parts.append(f"pre_logits {self.representation_size}")
        parts.append(f"grid {self.grid[0]}x{self.grid[1]}" if self.grid else "grid unknown")
        if self.posemb_grid and self.posemb_grid != self.grid:
            parts.append(f"posemb trained at {self.posemb_grid[0]}x{self.posemb_grid[1]}")
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


def grid_params(flat: dict[str, tuple]) -> dict[str, tuple[ParamRule, int]]:
    """The stored grid-dependent parameters (those of block 0 for per-layer ones), by leaf
    name: (rule, stored length on the rule's axis)."""
    found = {}
    for key, shape in flat.items():
        rule = param_rule(paths.leaf(key))
        if rule is not None and rule.axis is not None and paths.key_block_index(key) in (None, 0):
            found[rule.name] = (rule, shape[rule.axis])
    return found


def infer(
    shapes: dict,
    meta: dict,
    old_grid: Grid | None = None,
    likely_grid: Grid | None = None,
) -> Architecture:
    """The Architecture of a per-block parameter tree `shapes` (leaves with .shape).

    meta: from load_params / checkpoint_shapes (its `config` and `num_prefix_tokens` are used).
    The stored grid is, in this order: `old_grid`; the config's; the one grid that the stored
    position parameters allow (e.g. factorized tables); `likely_grid` (the grid of the model
    being restored) if they allow it; the square one they allow.
    """
    flat = paths.shapes(shapes)
    model = stored_model(meta.get("config"))
    params = grid_params(flat)
    known = dict(meta.get("num_prefix_tokens") or {})
    hints = {
        name: known.get(name, rule.prefix_hint(length, paths.CLS in flat))
        for name, (rule, length) in params.items()
    }
    grid = tuple(old_grid) if old_grid else (model.grid if model else None)
    if grid is None:
        grid = _grid_from_shapes(params, hints, likely_grid)
    prefixes = {
        name: _prefix(rule, length, grid, known.get(name), hints[name])
        for name, (rule, length) in params.items()
    }
    ph, pw, channels, hidden = flat[paths.PATCH_KERNEL]
    blocks = {i for k in flat if (i := paths.key_block_index(k)) is not None}
    return Architecture(
        hidden_size=hidden,
        num_layers=len(blocks),
        num_heads=flat[paths.join(_ATTENTION0, "query", "kernel")][1] if blocks else 0,
        mlp_dim=flat[paths.join(_BLOCK0, paths.BLOCK_MLP, "Dense_0", "kernel")][1] if blocks else 0,
        patch_size=(ph, pw),
        channels=channels,
        grid=grid,
        posemb_grid=(model.posemb_grid if model else None) or grid,
        posemb=model.posemb if model else _posemb_from_shapes(flat),
        num_prefix_tokens=prefixes,
        classifier=model.classifier if model else _classifier(flat),
        num_classes=flat[paths.join(paths.HEAD, "bias")][0] if _has(flat, paths.HEAD) else 0,
        representation_size=flat[paths.join(paths.PRE_LOGITS, "bias")][0]
        if _has(flat, paths.PRE_LOGITS)
        else None,
    )


def _prefix(rule: ParamRule, length: int, grid: Grid | None, known: int | None, hint: int) -> int:
    """Class-token rows of a stored parameter: as the layout says, else as the grid makes it
    fit, else the rule's hint."""
    if known is not None:
        return known
    fitting = rule.prefix_on(length, grid) if grid else None
    return hint if fitting is None else fitting


def _grid_from_shapes(
    params: dict[str, tuple[ParamRule, int]], prefixes: dict[str, int], likely: Grid | None
) -> Grid | None:
    """The grid the stored lengths allow: the only one, else `likely` if allowed, else the
    square one; None if none of those."""
    allowed: set[GridCandidate] | None = None
    for name, (rule, length) in params.items():
        candidates = rule.candidates(length, prefixes[name])
        allowed = candidates if allowed is None else _intersect(allowed, candidates)
    complete = {c for c in allowed or () if None not in c}
    if len(complete) == 1:
        return complete.pop()
    if likely is not None and all(
        rule.prefix_on(length, tuple(likely)) is not None for rule, length in params.values()
    ):
        return tuple(likely)
    squares = sorted(c for c in complete if c[0] == c[1])
    return squares[0] if squares else None


def _intersect(a: set[GridCandidate], b: set[GridCandidate]) -> set[GridCandidate]:
    """Grids allowed by both sets; None on an axis matches any length."""
    out = set()
    for ha, wa in a:
        for hb, wb in b:
            if None not in (ha, hb) and ha != hb or None not in (wa, wb) and wa != wb:
                continue
            out.add((ha if ha is not None else hb, wa if wa is not None else wb))
    return out


def _has(flat: dict, scope: str) -> bool:
    return any(paths.top(k) == scope for k in flat)


def _posemb_from_shapes(flat: dict) -> str:
    """The variants the stored parameters show, e.g. "learned+relative"."""
    rules = (param_rule(paths.leaf(k)) for k in flat)
    shown = {rule.variant for rule in rules if rule is not None}
    additive = [v for v in shown if not VARIANTS[v].acts_on_attention]
    attention = [v for v in shown if VARIANTS[v].acts_on_attention]
    name = additive[0] if additive else "fixed or none"
    if attention:
        return attention[0] if not additive else f"{name}+{attention[0]}"
    return name


def _classifier(flat: dict) -> str:
    if paths.CLS in flat:
        return "token"
    return "map" if _has(flat, paths.MAP_HEAD) else "gap"
