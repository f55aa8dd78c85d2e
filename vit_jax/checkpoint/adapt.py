"""Adapting stored parameters to the model a config describes (new resolution, head, layout).

Two steps, so that a checkpoint that cannot fit fails before anything is read or computed:

1. `plan(shapes, meta, model, ...)` compares the stored shapes with the model's abstract
   parameters (`jax.eval_shape(model.init, ...)`, per-block layout) and decides, per parameter:
   loaded as is, resized (from → to), converted (class-token row moved), re-initialised (head,
   absent class token or MAP head), or dropped; the patch kernel is also resized to another
   patch size and converted to other image channels (RGB <-> grayscale). Anything else that
   differs (width, depth, heads, MLP width, a position embedding with other parameters) raises
   CheckpointMismatchError naming the first parameter that does not fit, with both shapes; a
   change between parameter-free position embeddings (sincos, RoPE-Axial, none) that the
   stored config tells is a note in the report.
2. `execute(plan, params, rng, scan=...)` applies it and returns the model's parameters
   (per-block or scanned); `plan.report` is the table that `restore_into` prints (report.py).

Position parameters are adapted by their variant's rule, found by parameter name in
`vit_jax.models.posemb.param_rule`, with the model's `posemb_mode` (a relative bias table is
resized, or with "extrapolate" clamped to its trained offsets; a model with
`dynamic_image_size` adapts its tables to each input through the same rules); the patch
kernel by `patch_embed.resize_kernel`. This module only adds what no single variant owns: the
class token, the head and pre-logits, the MAP head, and the plan itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.checkpoint import architecture
from vit_jax.checkpoint.errors import CheckpointMismatchError
from vit_jax.checkpoint.report import (
    CONVERTED,
    DROPPED,
    LOADED,
    REINIT,
    RESIZED,
    Entry,
    Report,
    Shape,
)
from vit_jax.models import VisionTransformer, patch_embed, paths, resize
from vit_jax.models.posemb import (
    POSEMBS,
    Layout,
    ParamRule,
    learned,
    param_rule,
    split_posemb,
)
from vit_jax.models.scan import scan_params, unscan_params

# Parameters that may be absent on either side: a new task or pooling, not another architecture.
OPTIONAL = (paths.HEAD, paths.PRE_LOGITS, paths.MAP_HEAD, paths.CLS)
_POSEMB_KEY = paths.join(paths.TRANSFORMER, paths.POSEMB_SCOPE, learned.PARAM)

Builder = Callable[[dict, dict], "np.ndarray | jax.Array"]  # (stored, fresh init) -> value


@dataclasses.dataclass(frozen=True)
class Plan:
    """What `execute` will do: an Entry and a Builder per target parameter, plus dropped keys."""

    source: str
    model: VisionTransformer
    channels: int
    entries: tuple[Entry, ...]
    builders: dict[str, Builder]
    dtypes: dict[str, jnp.dtype]
    notes: tuple[str, ...] = ()

    @property
    def report(self) -> Report:
        return Report(self.source, self.entries, self.notes)


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
        keys = [paths.join(paths.HEAD, leaf) for leaf in ("kernel", "bias")]
        return any(self.stored.get(k) != self.target.get(k) for k in keys) and any(
            paths.top(k) == paths.HEAD for k in self.target
        )

    def mismatch(self, why: str) -> CheckpointMismatchError:
        differ = self.differences()
        fix = (
            f"build the model with {', '.join(differ)}"
            if differ
            else "build the model with those sizes"
        )
        return CheckpointMismatchError(
            f"{self.source} does not fit the model: {why}. The checkpoint is "
            f"{self.arch.summary()} (see `python -m vit_jax.tools.inspect {self.source}`); "
            f"{fix}, or restore a checkpoint of this architecture."
        )

    def differences(self) -> list[str]:
        """FIELD=VALUE of the checkpoint for each model field it holds another value of: the
        sizes, the classifier, and the position embedding where the checkpoint's config names
        it (what parameters alone show, such as '+relative', is not a model value)."""
        fields = ["hidden_size", "num_layers", "num_heads", "mlp_dim", "classifier"]
        if all(part in POSEMBS for part in self.arch.posemb.split("+")):
            fields.append("posemb")
        return [
            f"{name}={getattr(self.arch, name)!r}"
            for name in fields
            if getattr(self.arch, name) != getattr(self.model, name)
        ]

    def check(self, key: str, free_axis: int | None = None, free_axes: int = 0) -> Shape:
        """The stored shape of `key`, which must exist and agree with the model's on every axis
        but `free_axis` (and the leading `free_axes`), the ones an adaptation changes."""
        stored, target = self.stored.get(key), self.target[key]
        if stored is None:
            raise self.mismatch(f"parameter {key!r} {target} is not in the checkpoint")
        fixed = [i for i in range(free_axes, len(target)) if i != free_axis]
        if len(stored) != len(target) or any(stored[i] != target[i] for i in fixed):
            raise self.mismatch(
                f"parameter {key!r} is stored with shape {stored} but the model expects {target}"
            )
        return stored

    def stored_layout(self, key: str, rule: ParamRule, length: int) -> Layout:
        """The stored grid and class-token rows of `key`, checked against its length."""
        grid = self.arch.grid
        prefix = self.arch.num_prefix_tokens.get(rule.name, 0)
        if grid is None:
            why = "its config does not say and the shapes do not tell (not a square grid)"
        elif rule.length(Layout(grid, prefix)) != length:
            why = f"{key!r} has {length} rows, which do not fit grid {_grid(grid)}"
        else:
            return Layout(grid, prefix)
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
    return _as_is(key, ctx.check(key))


def _patch_kernel(ctx: _Context, key: str) -> tuple[Entry, Builder]:
    """The patch kernel [ph, pw, C, D]: resized to the model's patch (FlexiViT) and converted
    to its image channels (RGB <-> grayscale, `patch_embed.convert_channels`)."""
    target = ctx.target[key]
    stored = ctx.check(key, free_axes=2, free_axis=2)
    new_patch, channels = target[:2], target[2]
    if stored == target:
        return _as_is(key, stored)
    notes = []
    if stored[:2] != new_patch:
        notes.append(
            f"patch {_grid(stored[:2])} → {_grid(new_patch)}, pseudo-inverse of bilinear resize"
        )
    if stored[2] != channels:
        if 1 not in (stored[2], channels):
            raise ctx.mismatch(
                f"its patch kernel {stored} is for {stored[2]}-channel images and the model's "
                f"{target} for {channels}; only conversions to or from one channel are defined"
            )
        how = "summed" if channels == 1 else "repeated and scaled"
        notes.append(f"{stored[2]} → {channels} image channels, input planes {how}")

    def build(stored_params, fresh):
        kernel = patch_embed.convert_channels(stored_params[key], channels)
        return patch_embed.resize_kernel(kernel, new_patch)

    action = RESIZED if stored[:2] != new_patch else CONVERTED
    return Entry(key, action, stored, target, "; ".join(notes)), build


def _grid_param(ctx: _Context, key: str, rule: ParamRule) -> tuple[Entry, Builder]:
    """A position parameter, moved by its variant's rule from the stored layout (grid and
    class-token rows) to the model's."""
    stored = ctx.check(key, free_axis=rule.axis)
    old = ctx.stored_layout(key, rule, stored[rule.axis])
    new_grid = ctx.model.grid
    new = Layout(new_grid, rule.prefix_on(ctx.target[key][rule.axis], new_grid) or 0)
    if old == new:
        return _as_is(key, stored)
    notes = []
    mode = ctx.model.posemb_mode
    if old.grid != new.grid:
        how = "offsets clamped" if rule.extrapolates and mode == "extrapolate" else ctx.method
        notes.append(f"grid {_grid(old.grid)} → {_grid(new.grid)}, {how}")
    if old.num_prefix_tokens > new.num_prefix_tokens:
        notes.append(
            "class-token rows " + ("folded into cls" if paths.CLS in ctx.target else "dropped")
        )
    elif old.num_prefix_tokens < new.num_prefix_tokens:
        notes.append("class-token rows added as zeros")
    action = RESIZED if old.grid != new.grid else CONVERTED
    entry = Entry(key, action, stored, ctx.target[key], "; ".join(notes))
    builder = _apply(
        rule.resize, key, old, new, method=ctx.method, antialias=ctx.antialias, mode=mode
    )
    return entry, builder


def _add_class_position(cls: np.ndarray, posemb_table: np.ndarray) -> np.ndarray:
    """cls [1, 1, D] + the class token's row of an official pos_embedding [1, 1 + N, D]."""
    return cls + posemb_table[:, :1]


def _cls(ctx: _Context, key: str) -> tuple[Entry, Builder]:
    if key not in ctx.stored:
        return _reinit(key, None, ctx.target[key], "the checkpoint has no class token")
    stored = ctx.check(key)
    had_slot = ctx.arch.num_prefix_tokens.get(learned.PARAM, 0)
    if had_slot and _POSEMB_KEY in ctx.target and not ctx.model.posemb_cls_slot:
        # The stored model added pos_embedding[0] to its class token; this model adds nothing.
        note = "plus the stored class-token position embedding"
        entry = Entry(key, CONVERTED, stored, stored, note)
        return entry, lambda s, f: _add_class_position(s[key], s[_POSEMB_KEY])
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
        ctx.check(key)  # raises: asked to keep what does not fit
    if stored == target:
        note = "new head, keep_pre_logits=False"
    else:
        note = "not in the checkpoint" if stored is None else "stored with another width"
    return _reinit(key, stored, target, note)


def _map_head(ctx: _Context, key: str) -> tuple[Entry, Builder]:
    if key not in ctx.stored:
        return _reinit(key, None, ctx.target[key], "the checkpoint has no MAP head")
    return _loaded(ctx, key)


_BY_SCOPE = {paths.CLS: _cls, paths.HEAD: _head, paths.PRE_LOGITS: _pre_logits}
_BY_SCOPE[paths.MAP_HEAD] = _map_head


def _entry(ctx: _Context, key: str) -> tuple[Entry, Builder]:
    """The Entry and Builder of target parameter `key`, by the rule that owns it."""
    if key == paths.PATCH_KERNEL:
        return _patch_kernel(ctx, key)
    rule = param_rule(paths.leaf(key))
    if rule is not None and rule.axis is not None:
        return _grid_param(ctx, key, rule)
    return _BY_SCOPE.get(paths.top(key), _loaded)(ctx, key)


def _dropped(ctx: _Context, key: str) -> Entry:
    top = paths.top(key)
    if top not in OPTIONAL:
        raise ctx.mismatch(
            f"the checkpoint has {key!r} {ctx.stored[key]}, which the model does not have"
        )
    if top == paths.PRE_LOGITS and ctx.keep_pre_logits:
        raise ValueError(
            "keep_pre_logits=True but the model has no pre_logits layer: set "
            f"model.representation_size={ctx.stored[key][-1]} to keep the stored one."
        )
    field = {
        paths.HEAD: "num_classes=0",
        paths.PRE_LOGITS: "representation_size=None",
        paths.MAP_HEAD: f"classifier={ctx.model.classifier!r}",
        paths.CLS: f"classifier={ctx.model.classifier!r}",
    }[top]
    return Entry(key, DROPPED, ctx.stored[key], None, f"the model has {field}")


def per_block_shapes(shapes: dict) -> dict:
    """The per-block view of stored shapes (ShapeDtypeStructs), scanned or not."""
    return jax.eval_shape(unscan_params, shapes) if paths.is_scanned(shapes) else shapes


def plan(
    shapes: dict,
    meta: dict,
    model: VisionTransformer,
    *,
    keep_pre_logits: bool = False,
    method: str = resize.DEFAULT_METHOD,
    antialias: bool = resize.DEFAULT_ANTIALIAS,
    channels: int | None = None,
    old_grid: tuple[int, int] | None = None,
) -> Plan:
    """Decides how each parameter of `model` comes from a checkpoint with `shapes` (nested
    ShapeDtypeStructs in this package's names, per-block or scanned) and `meta` (from
    checkpoint_shapes / load_params). Raises CheckpointMismatchError before any array is read.

    keep_pre_logits: when the head is re-initialised (new class count), keep the stored
      pre_logits layer instead of re-initialising it; the model must then have one.
    method, antialias: grid resize of position embeddings and bias tables (models/resize.py);
      how they move (resized, or a bias table clamped) is the model's `posemb_mode`.
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
        stored=paths.shapes(stored_shapes),
        target=paths.shapes(target_tree),
        keep_pre_logits=keep_pre_logits,
        method=method,
        antialias=antialias,
    )
    builders, entries = {}, []
    for key in sorted(ctx.target):  # sorted: the "first" parameter that does not fit is defined
        entry, builders[key] = _entry(ctx, key)
        entries.append(entry)
    entries += [_dropped(ctx, key) for key in sorted(ctx.stored) if key not in ctx.target]
    dtypes = {k: v.dtype for k, v in paths.flatten(target_tree).items()}
    stored_model = architecture.stored_model(meta.get("config"))
    notes = (
        _reference_grid_note(model, arch.posemb_grid),
        _posemb_note(model, stored_model.posemb if stored_model else None),
    )
    notes = tuple(note for note in notes if note)
    return Plan(ctx.source, per_block, channels, tuple(entries), builders, dtypes, notes)


def _posemb_note(model: VisionTransformer, stored: str | None) -> str | None:
    """What loads without a word but changes what the weights see: the checkpoint's config
    names another position embedding than the model's, and none of the two that differ stores
    a parameter (sincos, RoPE-Axial, none); else None."""
    names = lambda posemb: {v.name for v in split_posemb(posemb) if v is not None}
    if stored is None or names(stored) == names(model.posemb):  # 'a+b' is 'b+a'
        return None
    return (
        f"the checkpoint was trained with posemb={stored!r} and this model has "
        f"posemb={model.posemb!r}: nothing stored depends on the difference, so everything "
        "loads, but the weights learned to read the other position embedding."
    )


def _reference_grid_note(model: VisionTransformer, trained) -> str | None:
    """What to do when `model` interpolates an embedding computed from patch positions
    (sincos, RoPE: nothing stored to resize) but does not know the `trained` grid to scale
    them to: it would use its own grid's integer positions instead."""
    computed = [v.name for v in split_posemb(model.posemb) if v is not None and v.positions]
    if not computed or model.posemb_mode != "interpolate" or model.posemb_grid is not None:
        return None
    if trained is None or tuple(trained) == model.grid:
        return None
    (h, w), (th, tw) = model.grid, trained
    return (
        f"{' and '.join(computed)} is computed from patch positions, which "
        f"posemb_mode='interpolate' scales to the grid it was trained on ({th}x{tw}), but "
        f"model.posemb_grid is unset, so this {h}x{w} model will use its own integer "
        f"positions: build it with posemb_grid=({th}, {tw}), e.g. "
        "vit_jax.checkpoint.with_trained_grid(model, path)."
    )


def execute(plan: Plan, params: dict, rng: jax.Array, *, scan: bool) -> dict:
    """Applies `plan` to stored `params` (nested, per-block or scanned): returns the model's
    parameters as host arrays, scanned if `scan`. `rng` initialises re-initialised ones."""
    stored = paths.flatten(unscan_params(params))
    fresh = _fresh(plan, rng, [e.key for e in plan.entries if e.action == REINIT])
    flat = {
        key: np.asarray(build(stored, fresh)).astype(plan.dtypes[key], copy=False)
        for key, build in plan.builders.items()
    }
    out = paths.unflatten(flat)
    return scan_params(out) if scan else out


def _fresh(plan: Plan, rng: jax.Array, keys: list[str]) -> dict:
    """Freshly initialised values of `keys` only: jit drops the rest of the init, so this costs
    a fraction of initialising the whole model."""
    if not keys:
        return {}

    def init(rng):
        images = jnp.zeros((1, *plan.model.image_size, plan.channels), jnp.float32)
        flat = paths.flatten(plan.model.init(rng, images)["params"])
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
    paths.require_params(params, "adapt_params")
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), params)
    the_plan = plan(shapes, meta or {}, model, **options)
    return execute(the_plan, params, rng, scan=model.scan), the_plan.report
