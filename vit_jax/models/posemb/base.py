"""What a position-embedding variant is: where it acts, what it stores, how that moves.

A variant is one `Variant` value, defined in its own file of this package and listed once in
`VARIANTS` (`__init__.py`). It acts in one of two places:

- additive (`add`): a table added to the tokens before the first encoder block; `add(module, x)`
  is called from `AddPositionEmbedding` (scope "Transformer/posembed_input", so its parameters
  live there);
- attention (`rotate` and/or `bias`): inside every attention layer, on queries and keys or on
  the logits; called from `Attention` (scope ".../MultiHeadDotProductAttention_1").

Either way the variant creates its parameters with `module.param(...)` in the calling module's
scope (with `module.param_dtype`) and reads what it needs from a `Position`: the patch grid,
the class-token count and the model's `posemb_*` / `rope_theta` settings.

What it stores is described by its `ParamRule`s: for each parameter, the axis that depends on
the patch grid, the length that axis has on a `Layout` (grid and class-token rows), the grids a
stored length is consistent with (shape inference for checkpoints without a config), and the
function that adapts a stored value to another layout (restore at a new resolution). The
checkpoint code (`vit_jax.checkpoint.adapt`) finds the rules by parameter name and never
re-implements a variant.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Grid = tuple[int, int]
# A grid a stored length allows; None on an axis the length says nothing about.
GridCandidate = tuple[int | None, int | None]


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the grid-dependent rows of a parameter come from: the patch grid (h, w) and the
    number of class-token (prefix) rows."""

    grid: Grid
    num_prefix_tokens: int


@dataclasses.dataclass(frozen=True)
class Position:
    """What position variants read: where the patch tokens sit and the model's settings for
    them (the VisionTransformer fields of the same names)."""

    grid: Grid
    num_prefix_tokens: int
    posemb_cls_slot: bool = True
    posemb_factorized: str = "concat"
    posemb_temperature: float = 10_000.0
    rope_theta: float = 100.0


@dataclasses.dataclass(frozen=True)
class ParamRule:
    """How one stored parameter of a variant depends on the patch grid.

    name: the parameter's leaf name (the registry key), e.g. "pos_embedding".
    variant: the variant the parameter shows a checkpoint has.
    axis: the axis whose length depends on the layout; every other axis must match exactly.
      None for a parameter that does not depend on the grid (it is kept as is; its rule only
      tells which variant a checkpoint has, and the other fields are unused).
    length: the length of that axis on a layout.
    candidates: the grids a stored length is consistent with, given its prefix rows.
    prefix_hint: the class-token rows of a stored length when the grid is unknown
      (`has_class_token`: the checkpoint has a `cls` parameter).
    resize: (value, old layout, new layout, *, method, antialias) -> the value on the new
      layout.
    """

    name: str
    variant: str
    axis: int | None
    length: Callable[[Layout], int] | None = None
    candidates: Callable[[int, int], set[GridCandidate]] | None = None
    prefix_hint: Callable[[int, bool], int] | None = None
    resize: Callable[..., jax.Array] | None = None

    def prefix_on(self, stored_length: int, grid: Grid) -> int | None:
        """The class-token rows (0 or 1) that make `stored_length` fit `grid`, if any."""
        fitting = [p for p in (0, 1) if self.length(Layout(grid, p)) == stored_length]
        return fitting[0] if fitting else None


def prefix_counts(old: Layout, new: Layout) -> dict[str, int]:
    """The class-token counts of a move between layouts, as the resize functions take them."""
    return {
        "num_prefix_tokens": old.num_prefix_tokens,
        "new_num_prefix_tokens": new.num_prefix_tokens,
    }


def grid_independent(name: str, variant: str) -> ParamRule:
    """The rule of a parameter that every grid shares (kept as is on restore)."""
    return ParamRule(name=name, variant=variant, axis=None)


def no_prefix(length: int, has_class_token: bool) -> int:
    """prefix_hint of parameters that never have class-token rows."""
    return 0


def always_valid(model: Any) -> None:
    """check of variants that fit every model."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """A position embedding, as the `posemb=` model field names it.

    name: e.g. "learned"; additive and attention variants may be joined: "learned+rope_axial".
    add: additive variants: (module, position, tokens [B, num_prefix_tokens + h*w, D]) -> same
      shape.
    rotate: attention variants: (module, position, q, k [B, N, heads, d]) -> rotated (q, k).
    bias: attention variants: (module, position, num_heads) -> logit bias [heads, N, N]
      (float32).
    check: (model) -> None, raising ValueError if the variant cannot be built with its fields.
    params: the parameters it stores, each with its rule.
    doc: one line for listings.
    """

    name: str
    doc: str
    add: Callable[..., jax.Array] | None = None
    rotate: Callable[..., tuple[jax.Array, jax.Array]] | None = None
    bias: Callable[..., jax.Array] | None = None
    check: Callable[[Any], None] = always_valid
    params: tuple[ParamRule, ...] = ()

    @property
    def acts_on_attention(self) -> bool:
        return self.rotate is not None or self.bias is not None


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def broadcast_batch(x: jax.Array, batch: int) -> jax.Array:
    """x [1, ...] -> [batch, ...]: a position term shared by every example (a relative bias, the
    RoPE-Mixed rotation). Its gradient sums the batch with a matrix product (ones [1, batch] x
    [batch, rest]), which XLA:CPU runs several times faster than its reduction over a leading
    axis: without it a learned position term cost a third more per attention layer."""
    return jnp.broadcast_to(x, (batch, *x.shape[1:]))


def _broadcast_batch_fwd(x, batch):
    return broadcast_batch(x, batch), None


def _broadcast_batch_bwd(batch, _, grad):
    summed = jnp.ones((1, batch), grad.dtype) @ grad.reshape(batch, -1)
    return (summed.reshape((1, *grad.shape[1:])),)


broadcast_batch.defvjp(_broadcast_batch_fwd, _broadcast_batch_bwd)


def factor_pairs(n: int) -> set[GridCandidate]:
    """Every (h, w) with h * w == n."""
    return {(h, n // h) for h in range(1, n + 1) if n % h == 0} if n > 0 else set()
