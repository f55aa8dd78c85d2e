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

Three grids meet there. `grid` is the patch grid of the tokens of this call; `param_grid` the
grid the stored parameters are made for (the model's own grid: they keep its shapes);
`reference_grid` the grid the position embedding was trained on (`posemb_grid`, else the
model's grid). On a grid other than its reference, a variant interpolates or extrapolates as
the model's `posemb_mode` says ("auto": each variant's own way):

- coordinates (sincos, RoPE): extrapolate = the integer cell indices of the grid, whatever its
  size; interpolate = cell i of an n-cell axis at (i + 0.5) * m / n - 0.5, m the reference's
  length of that axis (`axis_coordinates`): the same half-pixel centres as the table resize,
  so the grid spans the reference's coordinate range. "auto" extrapolates.
- tables (learned, factorized, relative): a table made for `param_grid` is adapted to `grid`
  on the fly by its `ParamRule.resize` (`adapt_to_tokens`), the very function a restore at
  that grid applies, with the model's mode and restore's default method.

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
import numpy as np

from vit_jax.models.resize import DEFAULT_ANTIALIAS, DEFAULT_METHOD

Grid = tuple[int, int]
# A grid a stored length allows; None on an axis the length says nothing about.
GridCandidate = tuple[int | None, int | None]
# The `posemb_mode` model field: what a variant does on a grid other than its reference grid.
POSEMB_MODES = ("auto", "interpolate", "extrapolate")


def resolved_mode(mode: str, auto: str) -> str:
    """`mode` ("auto", "interpolate" or "extrapolate"), "auto" read as the variant's own `auto`."""
    return auto if mode == "auto" else mode


def axis_coordinates(length: int, reference_length: int, mode: str) -> np.ndarray:
    """The coordinates [length] (float64) of the cells of an axis of `length` cells.

    extrapolate (and "auto"): the cell indices 0 .. length - 1, whatever the reference.
    interpolate: cell i at (i + 0.5) * reference_length / length - 0.5, the half-pixel centres
    of the table resize (models/resize.py): the axis spans the reference's range, each cell at
    the reference coordinate its centre falls on. At the reference length both are the indices
    exactly; at 3x cell 3j + 1 is j exactly; at 2x cells 2j and 2j + 1 average to j.
    """
    index = np.arange(length, dtype=np.float64)
    if resolved_mode(mode, "extrapolate") == "extrapolate":
        return index
    return (index + 0.5) * reference_length / length - 0.5


def grid_coordinates(
    grid: Grid, reference_grid: Grid | None = None, mode: str = "extrapolate"
) -> tuple[np.ndarray, np.ndarray]:
    """Column x and row y of every cell of `grid`, row-major: two float64 [h * w] arrays, each
    axis by `axis_coordinates` against `reference_grid` (default: `grid`; integer cells)."""
    (h, w), (rh, rw) = grid, reference_grid or grid
    ys, xs = np.meshgrid(
        axis_coordinates(h, rh, mode), axis_coordinates(w, rw, mode), indexing="ij"
    )
    return xs.reshape(-1), ys.reshape(-1)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the grid-dependent rows of a parameter come from: the patch grid (h, w) and the
    number of class-token (prefix) rows."""

    grid: Grid
    num_prefix_tokens: int


@dataclasses.dataclass(frozen=True)
class Position:
    """What position variants read: where the patch tokens sit and the model's settings for
    them (the VisionTransformer fields of the same names).

    grid: the patch grid (h, w) of the tokens of this call.
    param_grid: the grid the stored parameters are made for (the model's grid); None: `grid`.
    reference_grid: the grid the position embedding was trained on (the model's `posemb_grid`,
      else its grid); None: `param_grid`.
    mode: the model's `posemb_mode`, one of POSEMB_MODES.
    """

    grid: Grid
    num_prefix_tokens: int
    posemb_cls_slot: bool = True
    posemb_factorized: str = "concat"
    posemb_temperature: float = 10_000.0
    rope_theta: float = 100.0
    param_grid: Grid | None = None
    reference_grid: Grid | None = None
    mode: str = "auto"

    def __post_init__(self):
        param_grid = tuple(self.param_grid or self.grid)
        object.__setattr__(self, "grid", tuple(self.grid))
        object.__setattr__(self, "param_grid", param_grid)
        object.__setattr__(self, "reference_grid", tuple(self.reference_grid or param_grid))

    def coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """Column x and row y [h * w] of the patches of `grid` against the reference grid, as
        coordinate variants (sincos2d, RoPE) use them: integer ("auto" or "extrapolate") or
        scaled to the reference's range ("interpolate"); see `axis_coordinates`."""
        return grid_coordinates(self.grid, self.reference_grid, self.mode)


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
    resize: (value, old layout, new layout, *, method, antialias, mode) -> the value on the new
      layout; `mode` is the model's `posemb_mode` (a rule that can only resample ignores it).
      Restore and a model with `dynamic_image_size` both adapt through it (`adapt_to_tokens`).
    extrapolates: `resize` keeps the stored values and extends them by the edge with
      mode="extrapolate" rather than resampling (what the restore report says).
    """

    name: str
    variant: str
    axis: int | None
    length: Callable[[Layout], int] | None = None
    candidates: Callable[[int, int], set[GridCandidate]] | None = None
    prefix_hint: Callable[[int, bool], int] | None = None
    resize: Callable[..., jax.Array] | None = None
    extrapolates: bool = False

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


def adapt_to_tokens(
    rule: ParamRule, value: jax.Array, position: Position, num_prefix_tokens: int
) -> jax.Array:
    """A stored parameter `value`, made for `position.param_grid` with `num_prefix_tokens`
    class-token rows, on the grid of the tokens (`position.grid`): `rule.resize` with the
    model's mode and restore's default method, so a model with `dynamic_image_size` computes
    what a restore at that grid gives. The value itself on the parameter grid."""
    if position.grid == position.param_grid:
        return value
    old = Layout(position.param_grid, num_prefix_tokens)
    new = Layout(position.grid, num_prefix_tokens)
    return rule.resize(
        value, old, new, method=DEFAULT_METHOD, antialias=DEFAULT_ANTIALIAS, mode=position.mode
    )


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
    positions: computed from the patch coordinates (`Position.coordinates`): off the grid it
      was trained on, what it gives depends on `posemb_mode` and the reference grid
      (`posemb_grid`), not on anything stored.
    doc: one line for listings.
    """

    name: str
    doc: str
    add: Callable[..., jax.Array] | None = None
    rotate: Callable[..., tuple[jax.Array, jax.Array]] | None = None
    bias: Callable[..., jax.Array] | None = None
    check: Callable[[Any], None] = always_valid
    params: tuple[ParamRule, ...] = ()
    positions: bool = False

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


def sum_batch(x: jax.Array) -> jax.Array:
    """x [batch, ...] summed over its leading axis, as a matrix product (ones [1, batch] x
    [batch, rest]): XLA:CPU runs that several times faster than its reduction over a leading
    axis. Returns [...]."""
    batch = x.shape[0]
    return (jnp.ones((1, batch), x.dtype) @ x.reshape(batch, -1)).reshape(x.shape[1:])


def _broadcast_batch_bwd(batch, _, grad):
    return (sum_batch(grad)[None],)


broadcast_batch.defvjp(_broadcast_batch_fwd, _broadcast_batch_bwd)


def factor_pairs(n: int) -> set[GridCandidate]:
    """Every (h, w) with h * w == n."""
    return {(h, n // h) for h in range(1, n + 1) if n % h == 0} if n > 0 else set()
