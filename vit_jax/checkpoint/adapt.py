"""Adapting stored parameters to the model a config describes (new resolution, head, layout).

Two steps, so that a checkpoint that cannot fit fails before anything is read or computed:

1. `plan(shapes, meta, model, ...)` compares the stored shapes with the model's abstract
   parameters (`jax.eval_shape(model.init, ...)`, per-block layout) and decides, per parameter:
   loaded as is, resized (from → to), converted (class-token row moved), re-initialised (head,
   absent class token or MAP head), or dropped. Anything else that differs (width, depth, heads,
   MLP width, channels, another position-embedding variant) raises CheckpointMismatchError naming
   the first parameter that does not fit, with both shapes.
2. `execute(plan, params, rng, scan=...)` applies it and returns the model's parameters
   (per-block or scanned); `plan.report` is the table that `restore_into` prints.

Every resize calls the function that sits next to its variant: posemb.resize_posemb (learned),
posemb.resize_factorized, relpos.resize_bias_table and patch_embed.resize_kernel. Fixed
embeddings (sincos*) and RoPE have nothing to resize (rope_mixed's learned frequencies are kept).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vit_jax.checkpoint import architecture
from vit_jax.checkpoint.architecture import COL_KEY, POSEMB_KEY, RELPOS_LEAF, ROW_KEY
from vit_jax.checkpoint.errors import CheckpointMismatchError
from vit_jax.models import VisionTransformer, patch_embed, posemb, relpos, resize
from vit_jax.models.scan import is_scanned, scan_params, unscan_params

LOADED, RESIZED, CONVERTED, REINIT, DROPPED = (
    "loaded",
    "resized",
    "converted",
    "re-initialised",
    "dropped",
)
# Parameters that may be absent on either side: a new task or pooling, not another architecture.
OPTIONAL = ("head", "pre_logits", "MAPHead_0", "cls")

Shape = tuple[int, ...]
Builder = Callable[[dict, dict], "np.ndarray | jax.Array"]  # (stored, fresh init) -> value


@dataclasses.dataclass(frozen=True)
class Entry:
    """One parameter's fate: `key` ('/'-joined, per-block), `action`, shapes and a note."""

    key: str
    action: str
    stored: Shape | None
    target: Shape | None
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Report:
    """What a restore did to each parameter; `str(report)` is the printed table."""

    source: str
    entries: tuple[Entry, ...]

    def keys(self, action: str) -> list[str]:
        """Keys with the given action (LOADED, RESIZED, CONVERTED, REINIT or DROPPED)."""
        return [e.key for e in self.entries if e.action == action]

    def __str__(self) -> str:
        counts = collections.Counter(e.action for e in self.entries)
        head = f"restored {self.source}: " + ", ".join(
            f"{counts[a]} {a}" for a in (LOADED, RESIZED, CONVERTED, REINIT, DROPPED) if counts[a]
        )
        rows = collections.Counter(_row(e) for e in self.entries)  # one row for alike blocks
        return "\n".join(
            [head]
            + format_table(
                [
                    (action, key + (f" (x{n})" if n > 1 else ""), *rest)
                    for (action, key, *rest), n in rows.items()
                ]
            )
        )


def format_table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows of equally many cells -> lines of left-aligned columns, indented by two spaces."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        ("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))).rstrip()
        for row in rows
    ]


def _row(e: Entry) -> tuple[str, str, str, str]:
    key = architecture.block_pattern(e.key)
    if e.stored and e.target and e.stored != e.target:
        shapes = f"{e.stored} → {e.target}"
    else:
        shapes = str(e.stored or e.target)
    return (e.action, key, shapes, e.note)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What `execute` will do: an Entry and a Builder per target parameter, plus dropped keys."""

    source: str
    model: VisionTransformer
    channels: int
    entries: tuple[Entry, ...]
    builders: dict[str, Builder]
    dtypes: dict[str, jnp.dtype]

    @property
    def report(self) -> Report:
        return Report(self.source, self.entries)


@dataclasses.dataclass(frozen=True)
class _Context:
    source: str
    arch: architecture.Architecture
    model: VisionTransformer
    stored: dict[str, Shape]
    target: dict[str, Shape]
    keep_pre_logits: bool
    method: str
    antialias: bool

    @property
    def head_reinit(self) -> bool:
        return any(
            self.stored.get(k) != self.target.get(k) for k in ("head/kernel", "head/bias")
        ) and any(k.startswith("head/") for k in self.target)

    def mismatch(self, why: str) -> CheckpointMismatchError:
        return CheckpointMismatchError(
            f"{self.source} does not fit the model: {why}. The checkpoint is "
            f"{self.arch.summary()} (see `python -m vit_jax.tools.inspect {self.source}`); build "
            "the model with those sizes, or restore a checkpoint of this architecture."
        )

    def check(self, key: str, fixed_axes: slice) -> Shape:
        """The stored shape of `key`, which must exist and agree with the model's on the axes
        that no adaptation changes."""
        stored, target = self.stored.get(key), self.target[key]
        if stored is None:
            raise self.mismatch(f"parameter {key!r} {target} is not in the checkpoint")
        if len(stored) != len(target) or stored[fixed_axes] != target[fixed_axes]:
            raise self.mismatch(
                f"parameter {key!r} is stored with shape {stored} but the model expects {target}"
            )
        return stored

    def source_grid(self, key: str, rows: int, expected_rows: Callable[[tuple], int]) -> tuple:
        """The stored patch grid, checked against the `rows` that `key` has on it."""
        grid = self.arch.grid
        if grid is None:
            why = "its config does not say and the shapes do not tell (not a square grid)"
        elif rows != expected_rows(grid):
            why = f"{key!r} has {rows} rows, which do not fit grid {_grid(grid)}"
        else:
            return grid
        raise ValueError(
            f"cannot tell the patch grid of {self.source}: {why}. Pass old_grid=(rows, cols), "
            "the patch grid of the model that was saved."
        )


def _grid(grid: tuple[int, int]) -> str:
    return f"{grid[0]}x{grid[1]}"


def _as_is(key: str, shape: Shape | None) -> tuple[Entry, Builder]:
    return Entry(key, LOADED, shape, shape), lambda stored, fresh: stored[key]


def _reinit(key: str, stored: Shape | None, target: Shape, note: str) -> tuple[Entry, Builder]:
    return Entry(key, REINIT, stored, target, note), lambda stored, fresh: fresh[key]


def _apply(fn: Callable, key: str, *args, **kwargs) -> Builder:
    """Builder computing fn(stored[key], *args, **kwargs)."""
    return lambda stored, fresh: fn(stored[key], *args, **kwargs)


def _loaded(ctx: _Context, key: str) -> tuple[Entry, Builder]:
    return _as_is(key, ctx.check(key, slice(None)))


def _patch_kernel(ctx: _Context, key: str) -> tuple[Entry, Builder]:
    stored, new_patch = ctx.check(key, slice(2, None)), ctx.target[key][:2]
    if stored[:2] == new_patch:
        return _as_is(key, stored)
    note = f"patch {_grid(stored[:2])} → {_grid(new_patch)}, pseudo-inverse of bilinear resize"
    entry = Entry(key, RESIZED, stored, ctx.target[key], note)
    return entry, _apply(patch_embed.resize_kernel, key, new_patch)


def _grid_entry(ctx: _Context, key: str, stored: Shape, old_grid, prefix: int, new_prefix: int):
    """The Entry of a grid parameter (posemb, bias table) moving from `old_grid` with `prefix`
    class-token rows to the model's grid with `new_prefix`; None if nothing changes."""
    new_grid = ctx.model.grid
    notes = []
    if old_grid != new_grid:
        notes.append(f"grid {_grid(old_grid)} → {_grid(new_grid)}, {ctx.method}")
    if prefix > new_prefix:
        notes.append(
            "class-token rows " + ("folded into cls" if "cls" in ctx.target else "dropped")
        )
    elif prefix < new_prefix:
        notes.append("class-token rows added as zeros")
    if not notes:
        return None
    action = RESIZED if old_grid != new_grid else CONVERTED
    return Entry(key, action, stored, ctx.target[key], "; ".join(notes))


def _learned(ctx: _Context, key: str) -> tuple[Entry, Builder]:
    stored = ctx.check(key, slice(2, None))
    prefix, (h, w) = ctx.arch.posemb_prefix_tokens, ctx.model.grid
    old_grid = ctx.source_grid(key, stored[1], lambda g: prefix + g[0] * g[1])
    new_prefix = ctx.target[key][1] - h * w
    entry = _grid_entry(ctx, key, stored, old_grid, prefix, new_prefix)
    if entry is None:
        return _as_is(key, stored)
    return entry, _apply(
        posemb.resize_posemb,
        key,
        (h, w),
        num_prefix_tokens=prefix,
        old_grid=old_grid,
        new_prefix_tokens=new_prefix,
        method=ctx.method,
        antialias=ctx.antialias,
    )


def _factorized(ctx: _Context, key: str) -> tuple[Entry, Builder]:
    stored, length = ctx.check(key, slice(1, None)), ctx.target[key][0]
    if stored[0] == length:
        return _as_is(key, stored)
    entry = Entry(key, RESIZED, stored, ctx.target[key], f"{stored[0]} → {length}, {ctx.method}")
    return entry, _apply(
        posemb.resize_factorized, key, length, method=ctx.method, antialias=ctx.antialias
    )


def _relative(ctx: _Context, key: str) -> tuple[Entry, Builder]:
    stored = ctx.check(key, slice(1, None))
    prefix, new_prefix = ctx.arch.relpos_prefix, ctx.model.num_prefix
    old_grid = ctx.source_grid(key, stored[0], lambda g: relpos.num_relative_positions(g, prefix))
    entry = _grid_entry(ctx, key, stored, old_grid, prefix, new_prefix)
    if entry is None:
        return _as_is(key, stored)
    return entry, _apply(
        relpos.resize_bias_table,
        key,
        old_grid,
        ctx.model.grid,
        num_prefix=prefix,
        new_num_prefix=new_prefix,
        method=ctx.method,
        antialias=ctx.antialias,
    )


def _add_class_position(cls: np.ndarray, posemb_table: np.ndarray) -> np.ndarray:
    """cls [1, 1, D] + the class token's row of an official pos_embedding [1, 1 + N, D]."""
    return cls + posemb_table[:, :1]


def _cls(ctx: _Context, key: str) -> tuple[Entry, Builder]:
    if key not in ctx.stored:
        return _reinit(key, None, ctx.target[key], "the checkpoint has no class token")
    stored = ctx.check(key, slice(None))
    slot_rows = ctx.target.get(POSEMB_KEY, (0, 0))[1] - ctx.model.grid[0] * ctx.model.grid[1]
    if ctx.arch.posemb_prefix_tokens and POSEMB_KEY in ctx.target and slot_rows == 0:
        # The stored model added pos_embedding[0] to its class token; this model adds nothing.
        note = "plus the stored class-token position embedding"
        entry = Entry(key, CONVERTED, stored, stored, note)
        return entry, lambda s, f: _add_class_position(s[key], s[POSEMB_KEY])
    return _as_is(key, stored)


def _head(ctx: _Context, key: str) -> tuple[Entry, Builder]:
    stored, target = ctx.stored.get(key), ctx.target[key]
    if not ctx.head_reinit:
        return _as_is(key, stored)
    if stored is None:
        note = "the checkpoint has no head"
    elif stored[-1] != target[-1]:
        note = f"{stored[-1]} → {target[-1]} classes"
    else:
        note = "input width changed"
    return _reinit(key, stored, target, note)


def _pre_logits(ctx: _Context, key: str) -> tuple[Entry, Builder]:
    stored, target = ctx.stored.get(key), ctx.target[key]
    if stored == target and (ctx.keep_pre_logits or not ctx.head_reinit):
        return _as_is(key, stored)
    if ctx.keep_pre_logits:
        ctx.check(key, slice(None))  # raises: asked to keep what does not fit
    if stored == target:
        note = "new head, keep_pre_logits=False"
    else:
        note = "not in the checkpoint" if stored is None else "stored with another width"
    return _reinit(key, stored, target, note)


def _map_head(ctx: _Context, key: str) -> tuple[Entry, Builder]:
    if key not in ctx.stored:
        return _reinit(key, None, ctx.target[key], "the checkpoint has no MAP head")
    return _loaded(ctx, key)


def _rule(key: str) -> Callable[[_Context, str], tuple[Entry, Builder]]:
    if key == "embedding/kernel":
        return _patch_kernel
    if key == POSEMB_KEY:
        return _learned
    if key in (ROW_KEY, COL_KEY):
        return _factorized
    if key.endswith("/" + RELPOS_LEAF):
        return _relative
    top = key.split("/")[0]
    return {"cls": _cls, "head": _head, "pre_logits": _pre_logits, "MAPHead_0": _map_head}.get(
        top, _loaded
    )


def _dropped(ctx: _Context, key: str) -> Entry:
    top = key.split("/")[0]
    if top not in OPTIONAL:
        raise ctx.mismatch(
            f"the checkpoint has {key!r} {ctx.stored[key]}, which the model does not have"
        )
    if top == "pre_logits" and ctx.keep_pre_logits:
        raise ValueError(
            "keep_pre_logits=True but the model has no pre_logits layer: set "
            f"model.representation_size={ctx.stored[key][-1]} to keep the stored one."
        )
    field = {
        "head": "num_classes=0",
        "pre_logits": "representation_size=None",
        "MAPHead_0": f"classifier={ctx.model.classifier!r}",
        "cls": f"classifier={ctx.model.classifier!r}",
    }[top]
    return Entry(key, DROPPED, ctx.stored[key], None, f"the model has {field}")


def flat_shapes(tree: dict) -> dict[str, Shape]:
    """{'/'-joined key: shape} of a nested tree whose leaves have .shape."""
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def per_block_shapes(shapes: dict) -> dict:
    """The per-block view of stored shapes (ShapeDtypeStructs), scanned or not."""
    return jax.eval_shape(unscan_params, shapes) if is_scanned(shapes) else shapes


def plan(
    shapes: dict,
    meta: dict,
    model: VisionTransformer,
    *,
    keep_pre_logits: bool = False,
    method: str = "cubic",
    antialias: bool = True,
    channels: int | None = None,
    old_grid: tuple[int, int] | None = None,
) -> Plan:
    """Decides how each parameter of `model` comes from a checkpoint with `shapes` (nested
    ShapeDtypeStructs in this package's names, per-block or scanned) and `meta` (from
    checkpoint_shapes / load_params). Raises CheckpointMismatchError before any array is read.

    keep_pre_logits: when the head is re-initialised (new class count), keep the stored
      pre_logits layer instead of re-initialising it; the model must then have one.
    method, antialias: grid resize of position embeddings and bias tables (models/resize.py).
    channels: image channels of the model input (default: the checkpoint's).
    old_grid: the checkpoint's patch grid, if neither its config nor its shapes tell it (shapes
      tell a square grid, or the model's own grid when they fit it).
    """
    resize.check_method(method)  # a bad option fails now, not after the arrays are read
    stored_shapes = per_block_shapes(shapes)
    arch = architecture.infer(stored_shapes, meta, old_grid, likely_grid=model.grid)
    per_block = model.clone(scan=False) if model.scan else model
    channels = channels or arch.channels
    images = jax.ShapeDtypeStruct((1, *model.image_size, channels), jnp.float32)
    target_tree = jax.eval_shape(per_block.init, jax.random.key(0), images)["params"]
    ctx = _Context(
        source=meta.get("path", "the checkpoint"),
        arch=arch,
        model=model,
        stored=flat_shapes(stored_shapes),
        target=flat_shapes(target_tree),
        keep_pre_logits=keep_pre_logits,
        method=method,
        antialias=antialias,
    )
    builders, entries = {}, []
    for key in sorted(ctx.target):  # sorted: the "first" parameter that does not fit is defined
        entry, builders[key] = _rule(key)(ctx, key)
        entries.append(entry)
    entries += [_dropped(ctx, key) for key in sorted(ctx.stored) if key not in ctx.target]
    dtypes = {k: v.dtype for k, v in traverse_util.flatten_dict(target_tree, sep="/").items()}
    return Plan(ctx.source, per_block, channels, tuple(entries), builders, dtypes)


def execute(plan: Plan, params: dict, rng: jax.Array, *, scan: bool) -> dict:
    """Applies `plan` to stored `params` (nested, per-block or scanned): returns the model's
    parameters as host arrays, scanned if `scan`. `rng` initialises re-initialised ones."""
    stored = traverse_util.flatten_dict(unscan_params(params), sep="/")
    fresh = _fresh(plan, rng, [e.key for e in plan.entries if e.action == REINIT])
    flat = {
        key: np.asarray(build(stored, fresh)).astype(plan.dtypes[key], copy=False)
        for key, build in plan.builders.items()
    }
    out = traverse_util.unflatten_dict(flat, sep="/")
    return scan_params(out) if scan else out


def _fresh(plan: Plan, rng: jax.Array, keys: list[str]) -> dict:
    """Freshly initialised values of `keys` only: jit drops the rest of the init, so this costs
    a fraction of initialising the whole model."""
    if not keys:
        return {}

    def init(rng):
        images = jnp.zeros((1, *plan.model.image_size, plan.channels), jnp.float32)
        flat = traverse_util.flatten_dict(plan.model.init(rng, images)["params"], sep="/")
        return {k: flat[k] for k in keys}

    return jax.jit(init)(rng)


def adapt_params(
    params: dict,
    model: VisionTransformer,
    rng: jax.Array,
    *,
    meta: dict | None = None,
    **options,
) -> tuple[dict, Report]:
    """Stored parameters (nested, this package's names) -> parameters of `model` and a Report.

    `meta` (from load_params) tells the stored grid when it is not square; `options` are those
    of `plan`. For files, `vit_jax.checkpoint.restore_into` does this after checking shapes.
    """
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), params)
    the_plan = plan(shapes, meta or {}, model, **options)
    return execute(the_plan, params, rng, scan=model.scan), the_plan.report
