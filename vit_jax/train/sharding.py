"""The device mesh and the rule that places every array of the train state on it.

The mesh has two axes, sized by `config.mesh`:

    data   replicas of the state (pure data parallelism)
    fsdp   devices among which each large tensor is split (fully sharded data parallelism)

`--config.mesh.data=-1 --config.mesh.fsdp=8`: -1 takes whatever the other axis leaves of the
devices. The batch is split over both axes (every device gets its own rows).

The rule (big_vision's `fsdp` strategy): a tensor of at most `sharding.fsdp_min_size_mb` stays
replicated; a larger one is split over the `fsdp` axis along its largest dimension that the axis
size divides (none divides: replicated). Optimizer state follows its parameter, since it has
the parameter's shape. On a mesh with fsdp=1 everything is replicated.

Overrides, first match wins, applied before the rule: `--config.sharding.overrides=
"PATTERN=RULE,..."` with PATTERN a regular expression searched in the '/'-joined path of each
state leaf (e.g. `params/Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel`; optimizer
state paths end with the parameter's) and RULE one of `replicate`, `fsdp` (the rule above
without the size threshold) or a dimension index N (split dimension N over `fsdp`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vit_jax.options import option, out_of_range

DATA, FSDP = "data", "fsdp"
AXES = (DATA, FSDP)
BATCH_AXES = (DATA, FSDP)  # the batch is split over every device
RULES = ("replicate", "fsdp")  # or a dimension index


@dataclasses.dataclass(frozen=True)
class MeshOptions:
    """The axis sizes of the device mesh (`config.mesh`)."""

    data: int = option(-1, "replicas of the state; -1: the devices the fsdp axis leaves", low=-1)
    fsdp: int = option(1, "devices each large tensor is split over (FSDP); 1: none", low=1)


@dataclasses.dataclass(frozen=True)
class ShardingOptions:
    """How the state is placed on the mesh (`config.sharding`)."""

    fsdp_min_size_mb: float = option(
        4.0, "tensors of at most this many MiB stay replicated under fsdp", low=0
    )
    overrides: str = option(
        "", "comma-separated PATTERN=RULE (RULE: replicate, fsdp or a dimension index)"
    )


def mesh_shape(opts: MeshOptions, num_devices: int) -> dict[str, int]:
    """{"data": d, "fsdp": f} with d * f == num_devices; raises ValueError if they cannot."""
    fsdp, data = opts.fsdp, opts.data
    if data == 0:
        raise out_of_range("mesh.data", data, ">= 1, or -1 (the devices left)")
    if data == -1:
        data = num_devices // fsdp if num_devices % fsdp == 0 else 0
    if data * fsdp != num_devices:
        raise ValueError(
            f"mesh.data={opts.data} x mesh.fsdp={opts.fsdp} does not make the {num_devices} "
            f"devices of this run: choose sizes whose product is {num_devices} (use "
            "mesh.data=-1 for what mesh.fsdp leaves)."
        )
    return {DATA: data, FSDP: fsdp}


def make_mesh(opts: MeshOptions, devices: Sequence | None = None) -> Mesh:
    """The (data, fsdp) mesh over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(opts, len(devices))
    return jax.make_mesh(
        tuple(shape[a] for a in AXES),
        AXES,
        axis_types=(jax.sharding.AxisType.Auto,) * len(AXES),
        devices=devices,
    )


def parse_overrides(text: str) -> tuple[tuple[str, str], ...]:
    """ "head/.*=replicate,kernel=0" -> (("head/.*", "replicate"), ("kernel", "0"))."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        pattern, sep, rule = item.rpartition("=")
        if not sep or not pattern or not (rule in RULES or rule.isdigit()):
            raise ValueError(
                f"sharding.overrides item {item!r} is not PATTERN=RULE with RULE one of "
                f"{RULES} or a dimension index, e.g. 'head/.*=replicate'."
            )
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"sharding.overrides pattern {pattern!r} is not a regex: {e}.") from e
        pairs.append((pattern, rule))
    return tuple(pairs)


def path_name(path) -> str:
    """A tree_util key path -> 'params/Transformer/encoderblock_0/...'."""
    names = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                names.append(str(getattr(key, attr)))
                break
    return "/".join(names)


def leaf_spec(
    shape: tuple[int, ...], nbytes: int, fsdp: int, min_bytes: float, rule=None, name: str = ""
) -> P:
    """The PartitionSpec of one leaf (`name`, for messages): `rule` (an override) or the
    size-thresholded FSDP rule."""
    if rule == "replicate" or fsdp == 1 and rule is None:
        return P()
    if rule is not None and rule.isdigit():
        dim = int(rule)
        what = f"sharding override {rule!r} for {name or 'a tensor'} {shape}"
        if dim >= len(shape):
            raise ValueError(
                f"{what}: it has no dimension {dim} (only 0-{len(shape) - 1}): choose one of "
                "them or 'replicate'."
            )
        if shape[dim] % fsdp:
            raise ValueError(
                f"{what} splits its dimension {dim} ({shape[dim]}) over fsdp={fsdp}, which does "
                "not divide it: choose another dimension or 'replicate'."
            )
        return P(*([None] * dim + [FSDP]))
    if rule is None and nbytes <= min_bytes:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0 and shape[dim] >= fsdp:
            return P(*([None] * dim + [FSDP]))
    return P()


def state_specs(abstract_state, fsdp: int, opts: ShardingOptions) -> object:
    """A PartitionSpec for every leaf of a train state (leaves with .shape and .dtype) on a
    mesh whose fsdp axis has `fsdp` devices; needs no devices (it also plans meshes larger
    than this machine's). Raises ValueError for an override pattern that matches no
    parameter."""
    overrides = parse_overrides(opts.overrides)
    min_bytes = opts.fsdp_min_size_mb * 2**20
    leaves, tree = jax.tree_util.tree_flatten_with_path(abstract_state)
    names = [path_name(path) for path, _ in leaves]
    for pattern, _ in overrides:
        if not any(re.search(pattern, n) for n in names if n.startswith("params/")):
            raise ValueError(
                f"sharding.overrides pattern {pattern!r} matches no parameter; parameters are "
                f"named like {next((n for n in names if n.startswith('params/')), 'params/...')!r}."
            )
    specs = []
    for name, (_, leaf) in zip(names, leaves, strict=True):
        rule = next((r for p, r in overrides if re.search(p, name)), None)
        nbytes = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
        specs.append(leaf_spec(tuple(leaf.shape), nbytes, fsdp, min_bytes, rule, name))
    return jax.tree_util.tree_unflatten(tree, specs)


def state_shardings(abstract_state, mesh: Mesh, opts: ShardingOptions) -> object:
    """NamedShardings on `mesh` for every leaf of a train state, by `state_specs`."""
    specs = state_specs(abstract_state, mesh.shape[FSDP], opts)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=is_spec)


def is_spec(x) -> bool:
    """is_leaf for trees of PartitionSpecs (a PartitionSpec is a tuple, so a pytree node)."""
    return isinstance(x, P)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows of the batch split over every device of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
