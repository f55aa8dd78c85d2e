"""What a training step costs: its FLOPs, the peak rate to compare them with, and its memory.

One home for the figures that the training log (img/s, MFU), `benchmarks/train_step.py` and
`python -m vit_jax.tools.memory` report.

**FLOPs** (`model_flops`, `train_flops`): computed analytically from the architecture, the
convention of MFU (PaLM, Appendix B): the matrix products of the forward pass at 2 FLOPs per
multiply-add (patch embedding, q/k/v/out projections, the two attention products, MLP, pooling
head, head), and a training step = 3 x forward (the backward pass computes two products per
forward product) less the patch embedding's product for the images' gradient, which no step
computes (a test counts the products of the step's jaxpr: equal). Element-wise work (LayerNorm,
softmax, GELU, position embeddings, the optimizer) and rematerialised recomputation are not
counted: they are the implementation's cost, not the model's. `xla_flops` reads XLA's own count
of a compiled step, which counts every operation, a `scan` or gradient-accumulation loop body
ONCE (a scanned model reports about one layer's share) and per device under sharding: compare
it with the analytic figure on the unrolled, unsharded step (the tests and the benchmark do).

**Peak** (`peak_flops`): a device's published dense bf16 peak (TPUs, NVIDIA GPUs; the MFU
convention), else, on CPUs and unknown devices, the float32 rate of a 2048 x 2048 matrix
product measured on the spot (`measured_matmul_flops`). MFU = model FLOPs per second / peak.

**Memory** (`plan_memory`): how much memory a training run needs on each device, planned
without running it.

    plan = plan_memory(config, devices=64)   # a config as vit_jax.main takes it

Two parts, both for the (data, fsdp) mesh of `config.mesh` over `devices` devices (which may be
more than this machine has):

- The train state, exactly: parameters, optimizer state and gradients (laid out like the
  parameters) in bytes per device, from the abstract train state (`jax.eval_shape`: nothing is
  allocated) and the placement rule of `vit_jax.train.sharding.state_specs`. A leaf split over
  the fsdp axis holds nbytes / fsdp on each device, a replicated leaf all of it.
- The activation peak, estimated: the project's own train step (`run_train_step`, the one
  `vit_jax.main` runs) is lowered and compiled for the per-device batch (global batch / devices)
  on ONE local device with abstract inputs, and XLA's `memory_analysis()` gives its temporary
  buffers (`temp_size_in_bytes`: the activations kept for the backward pass, the gradients and
  the optimizer's temporaries of that one-device step). Compiled by XLA:CPU (on a machine
  without accelerators) this is a PROXY for TPU/GPU: other backends fuse, lay out, schedule
  and rematerialise differently (and XLA:CPU's peak does not even grow linearly with the
  batch), so treat it as an order of magnitude, not a budget. Under FSDP the one-device step
  holds full-size gradients, so the temporaries are an upper bound there.

Nothing here opens a dataset: an unset `model.num_classes` is taken as 1000 (ImageNet-1k),
and images have the channels the data config declares (`vit_jax.data.image_channels`: the
tfds dataset's image feature, or RGB for an image folder) without any data being read.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vit_jax.data import image_channels
from vit_jax.options import check, read
from vit_jax.train import optim, sharding
from vit_jax.train.config import SECTIONS, TrainOptions, validate
from vit_jax.train.sharding import FSDP, MeshOptions, ShardingOptions
from vit_jax.train.state import KEY_SHAPE, create_state, init_params
from vit_jax.train.step import run_train_step

DEFAULT_NUM_CLASSES = 1000  # an unset model.num_classes (the dataset's at train time)
CHANNELS = 3  # RGB: where no dataset says otherwise (the benchmark's ImageNet-like batches)


# ---------------------------------------------------------------------------------------------
# FLOPs


def model_flops(model, channels: int = CHANNELS) -> dict[str, int]:
    """Forward-pass FLOPs of ONE image of `channels` channels through `model` (a
    VisionTransformer), matrix products only, 2 per multiply-add, by part: {"patch_embed",
    "attention_projections", "attention_products", "mlp", "pooling", "head", "forward"}
    (forward = their sum)."""
    (h, w), (ph, pw) = model.grid, model.patch_size
    d, m, layers = model.hidden_size, model.mlp_dim, model.num_layers
    n = h * w + model.num_prefix_tokens
    parts = {
        "patch_embed": 2 * h * w * ph * pw * channels * d,
        "attention_projections": layers * 2 * n * d * 4 * d,  # q, k, v, out
        "attention_products": layers * 2 * 2 * n * n * d,  # q kᵀ, weights v
        "mlp": layers * 2 * 2 * n * d * m,
        "pooling": 0,
        "head": 0,
    }
    if model.classifier == "map":  # one probe attending over n tokens, then an MLP
        parts["pooling"] = 2 * d * d * 2 + 2 * n * d * d * 2 + 2 * 2 * n * d + 2 * 2 * d * m
    rows = n if model.classifier == "unpooled" else 1
    width = d
    if model.representation_size is not None:
        parts["head"] += 2 * rows * d * model.representation_size
        width = model.representation_size
    parts["head"] += 2 * rows * width * model.num_classes
    parts["forward"] = sum(parts.values())
    return parts


def train_flops(model, batch_size: int, channels: int = CHANNELS) -> int:
    """Model FLOPs of one training step on `batch_size` images: the forward pass and, in the
    backward pass, the gradients of both operands of every product (3 x forward), except the
    images' gradient through the patch embedding, which no step computes."""
    parts = model_flops(model, channels)
    return (3 * parts["forward"] - parts["patch_embed"]) * batch_size


def xla_flops(compiled) -> float | None:
    """XLA's FLOP count of a compiled function (`jax.jit(f).lower(...).compile()`), or None if
    the backend gives none. Counts element-wise operations too; a loop body (scan, gradient
    accumulation) once; per device under sharding."""
    try:
        analysis = compiled.cost_analysis()
    except (NotImplementedError, RuntimeError):
        return None
    if isinstance(analysis, list | tuple):  # older releases: one dict per program
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"])


# ---------------------------------------------------------------------------------------------
# Peak FLOP rate

# Dense bf16 peak per JAX device in FLOP/s, from the vendors' data sheets, matched against
# jax.Device.device_kind: the longest name contained in it, case-insensitively ("L40S" before
# "L40" before "L4"). A TPU v2 or v3 chip is two JAX devices (one per core): half the chip's
# figure; from v4 on a device is a chip.
PUBLISHED_PEAK_FLOPS = (
    ("TPU v6 lite", 918e12),  # Trillium / v6e
    ("TPU v5p", 459e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5", 459e12),
    ("TPU v4 lite", 138e12),  # v4i
    ("TPU v4", 275e12),
    ("TPU v3", 123e12 / 2),
    ("TPU v2", 45e12 / 2),
    ("B200", 2250e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("V100", 125e12),  # fp16 tensor cores
)


def published_peak_flops(device_kind: str) -> float | None:
    """The dense bf16 peak of a device kind (e.g. "TPU v4", "NVIDIA H100 80GB HBM3"), or None."""
    kind = device_kind.lower()
    matches = [(len(name), flops) for name, flops in PUBLISHED_PEAK_FLOPS if name.lower() in kind]
    return max(matches)[1] if matches else None


def measured_matmul_flops(size: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
    """FLOP/s of a [size, size] x [size, size] product on the default device (best of
    `repeats` after a warm-up)."""
    a = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


@dataclasses.dataclass(frozen=True)
class Peak:
    """A per-device peak FLOP rate and where it comes from ("published bf16 peak of TPU v4",
    "measured float32 2048x2048 matmul")."""

    flops: float
    source: str


def peak_flops(device: jax.Device | None = None) -> Peak:
    """The peak that MFU divides by: the device's published bf16 peak if it is in
    PUBLISHED_PEAK_FLOPS, else (CPUs, unknown accelerators) the measured float32 matmul rate,
    measured once per process and device kind (a study that trains many runs pays it once)."""
    return _peak_flops(device or jax.devices()[0])


@functools.cache
def _peak_flops(device: jax.Device) -> Peak:
    published = published_peak_flops(device.device_kind)
    if published is not None and device.platform != "cpu":
        return Peak(published, f"published bf16 peak of {device.device_kind}")
    return Peak(measured_matmul_flops(), "measured float32 2048x2048 matmul")


def peak_holder() -> str:
    """What one peak belongs to: a "device", but on CPUs a "process": simulated CPU devices
    (JAX_NUM_CPU_DEVICES) share one processor, whose measured peak is already the whole
    machine's."""
    return "process" if jax.devices()[0].platform == "cpu" else "device"


def peak_holders() -> int:
    """How many peaks the step's FLOPs are shared by (`peak_holder`)."""
    return jax.process_count() if peak_holder() == "process" else jax.device_count()


def mfu(flops_per_second_per_device: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s of one device over its peak FLOP/s."""
    return flops_per_second_per_device / peak_flops


# ---------------------------------------------------------------------------------------------
# Memory


def leaf_nbytes(leaf) -> int:
    """Bytes of one whole array (anything with .shape and .dtype)."""
    return math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize


def leaf_bytes_per_device(leaf, spec: jax.sharding.PartitionSpec, fsdp: int) -> int:
    """Bytes one device holds of `leaf` placed by `spec` on a mesh whose fsdp axis has `fsdp`
    devices: nbytes / fsdp if a dimension is split over fsdp (which it must divide, as the rule
    guarantees), else nbytes (replicated; the data axis always replicates)."""
    nbytes = leaf_nbytes(leaf)
    for dim, axis in enumerate(spec):
        if axis == FSDP or isinstance(axis, tuple) and FSDP in axis:
            if leaf.shape[dim] % fsdp:
                raise ValueError(
                    f"dimension {dim} of a {tuple(leaf.shape)} tensor is split over fsdp={fsdp}, "
                    "which does not divide it."
                )
            return nbytes // fsdp
    return nbytes


def tree_bytes_per_device(tree, specs, fsdp: int) -> int:
    """Sum of `leaf_bytes_per_device` over a tree and its matching tree of PartitionSpecs."""
    leaves = jax.tree.leaves(tree)
    spec_leaves = jax.tree.leaves(specs, is_leaf=sharding.is_spec)
    return sum(
        leaf_bytes_per_device(leaf, spec, fsdp)
        for leaf, spec in zip(leaves, spec_leaves, strict=True)
    )


def abstract_train_state(
    model, tx: optax.GradientTransformation, channels: int = CHANNELS, rng=KEY_SHAPE
) -> dict:
    """Shapes and dtypes of the train state {"step", "params", "opt_state", "rng"} of `model`
    and `tx` for images of `channels` channels; nothing is computed or allocated. `rng`: a key
    or its shape."""
    return jax.eval_shape(lambda r: create_state(init_params(model, r, channels), tx, r), rng)


def state_bytes_per_device(abstract_state, fsdp: int, opts: ShardingOptions) -> dict[str, int]:
    """Bytes per device of the state's parts on a mesh with `fsdp` devices on its fsdp axis:
    {"params", "opt_state", "grads" (placed like the params), "other" (step, rng)} and the
    whole-model "num_params"."""
    specs = sharding.state_specs(abstract_state, fsdp, opts)
    part = lambda key: tree_bytes_per_device(abstract_state[key], specs[key], fsdp)
    other = [k for k in abstract_state if k not in ("params", "opt_state")]
    return {
        "params": part("params"),
        "opt_state": part("opt_state"),
        "grads": part("params"),
        "other": sum(part(k) for k in other),
        "num_params": sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_state["params"])),
    }


def abstract_batch(batch_size: int, image_size: tuple[int, int], channels: int = CHANNELS):
    """{"image": float32 [B, H, W, C], "label": int32 [B]} as ShapeDtypeStructs."""
    return {
        "image": jax.ShapeDtypeStruct((batch_size, *image_size, channels), jnp.float32),
        "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
    }


def compiled_step_memory(train_step, abstract_state, batch) -> dict[str, Any] | None:
    """XLA's memory analysis of `train_step(state, batch)` compiled on one local device (the
    state donated, as the training loop does) for abstract inputs: {"temp", "argument",
    "output", "alias", "generated_code", "source"} in bytes, source e.g. "xla:cpu proxy" or
    "xla:gpu"; None if the backend gives no analysis."""
    compiled = jax.jit(train_step, donate_argnums=0).lower(abstract_state, batch).compile()
    try:
        stats = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):
        stats = None
    if stats is None:
        return None
    platform = jax.devices()[0].platform
    return {
        "temp": int(stats.temp_size_in_bytes),
        "argument": int(stats.argument_size_in_bytes),
        "output": int(stats.output_size_in_bytes),
        "alias": int(stats.alias_size_in_bytes),
        "generated_code": int(stats.generated_code_size_in_bytes),
        "source": f"xla:{platform} proxy" if platform == "cpu" else f"xla:{platform}",
    }


@dataclasses.dataclass(frozen=True)
class Planned:
    """What a plan is computed from: the checked config sections, with the mesh sized for
    `devices` devices (`mesh` = {"data": d, "fsdp": f})."""

    model: Any
    train: TrainOptions
    optimizer: optim.OptimizerOptions
    sharding: ShardingOptions
    devices: int
    mesh: dict[str, int]
    num_classes_assumed: bool
    channels: int


def check_config(config: ml_collections.ConfigDict, devices: int) -> Planned:
    """Checks `config` as `vit_jax.train.config.validate` does, but for a run on `devices`
    devices instead of this machine's: the mesh must make `devices` and the global batch must
    split over them (x grad_accum_steps). An unset model.num_classes becomes 1000. Raises
    ValueError naming the field."""
    if devices < 1:
        raise ValueError(f"devices={devices} must be >= 1.")
    config = config.copy_and_resolve_references()
    train_values = check(TrainOptions, dict(config), extra=SECTIONS)
    train = TrainOptions(**{k: v for k, v in train_values.items() if k not in SECTIONS})
    mesh = read(MeshOptions, dict(config.get("mesh") or {}), "mesh.")
    shape = sharding.mesh_shape(mesh, devices)
    if train.parallel == "pmap" and mesh.fsdp > 1:
        raise ValueError(
            f"parallel='pmap' replicates the whole state, so it cannot shard it over "
            f"mesh.fsdp={mesh.fsdp}: use parallel='jit' for FSDP, or mesh.fsdp=1."
        )
    for name in ("batch_size", "eval_batch_size"):
        accum = train.grad_accum_steps if name == "batch_size" else 1
        if getattr(train, name) % (devices * accum):
            raise ValueError(
                f"{name}={getattr(train, name)} is not divisible by {devices} devices x "
                f"grad_accum_steps={accum}: use a multiple of {devices * accum}."
            )
    assumed = config.model.get("num_classes") is None
    local = config  # the same config, with what depends on this machine's devices made local
    with local.unlocked():
        if assumed:
            local.model.num_classes = DEFAULT_NUM_CLASSES
        local.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
        local.parallel = "jit"
        local.batch_size = local.eval_batch_size = jax.device_count() * train.grad_accum_steps
    settings = validate(local)
    channels = image_channels(settings.data)
    return Planned(
        settings.model,
        train,
        settings.optimizer,
        settings.sharding,
        devices,
        shape,
        assumed,
        channels,
    )


def step_memory(planned: Planned, tx, schedule, abstract_state, batch: int) -> dict | None:
    """`compiled_step_memory` of the project's train step (`run_train_step`: with the run's
    label smoothing, mixup and gradient accumulation) for the per-device `batch`."""
    model = planned.model
    step = run_train_step(model, planned.train, tx, schedule)
    batch = abstract_batch(batch, model.image_size, planned.channels)
    return compiled_step_memory(step, abstract_state, batch)


def plan_memory(
    config: ml_collections.ConfigDict, devices: int | None = None, compile_step: bool = True
) -> dict[str, Any]:
    """The memory plan of `config` on a (data, fsdp) mesh of `devices` devices (default: this
    machine's jax.device_count()).

    Returns a JSON-ready dict: devices, mesh {"data", "fsdp"}, variant, num_params, num_classes
    (+ num_classes_assumed), global_batch_size, per_device_batch_size; exact, from the sharding
    rule: params/opt_state/grads_bytes_per_device and state_bytes_per_device (params +
    opt_state + step and rng). From the step compiled on one device for the per-device batch
    (compile_step; else all None): peak_bytes_per_device (XLA's temporaries of that step:
    activations, full-size gradients, optimizer temporaries), peak_source ("xla:cpu proxy",
    "xla:gpu", ...), xla_argument_bytes, xla_output_bytes and total_bytes_per_device = state +
    peak: exact accounting of the one-device step under pure data parallelism, an upper bound
    under FSDP (whose gradients and optimizer temporaries are sharded, not full-size).
    """
    planned = check_config(config, jax.device_count() if devices is None else devices)
    model, train = planned.model, planned.train
    tx, schedule = optim.make_optimizer(planned.optimizer, train.total_steps)
    abstract = abstract_train_state(model, tx, planned.channels)
    state = state_bytes_per_device(abstract, planned.mesh[FSDP], planned.sharding)
    state_total = state["params"] + state["opt_state"] + state["other"]
    per_device = train.batch_size // planned.devices
    stats = step_memory(planned, tx, schedule, abstract, per_device) if compile_step else None
    get = lambda key: None if stats is None else stats[key]
    return {
        "devices": planned.devices,
        "mesh": dict(planned.mesh),
        "variant": model.variant,
        "num_params": state["num_params"],
        "num_classes": model.num_classes,
        "num_classes_assumed": planned.num_classes_assumed,
        "channels": planned.channels,
        "global_batch_size": train.batch_size,
        "per_device_batch_size": per_device,
        "params_bytes_per_device": state["params"],
        "opt_state_bytes_per_device": state["opt_state"],
        "grads_bytes_per_device": state["grads"],
        "state_bytes_per_device": state_total,
        "peak_bytes_per_device": get("temp"),
        "peak_source": get("source"),
        "xla_argument_bytes": get("argument"),
        "xla_output_bytes": get("output"),
        "total_bytes_per_device": None if stats is None else state_total + stats["temp"],
    }


GIB = 2**30


def format_plan(plan: Mapping[str, Any]) -> str:
    """The human-readable table of a plan (sizes in GiB)."""
    gib = lambda n: "unknown" if n is None else f"{n / GIB:.3f} GiB"
    mesh, batch = plan["mesh"], plan["per_device_batch_size"]
    assumed = " (model.num_classes unset: assumed)" if plan["num_classes_assumed"] else ""
    peak = gib(plan["peak_bytes_per_device"])
    source = plan["peak_source"] or "not compiled"
    rows = [
        ("model", f"{plan['variant']}, {plan['num_params']:,} parameters"),
        ("classes", f"{plan['num_classes']}{assumed}"),
        ("images", f"{plan['channels']} channel{'s' if plan['channels'] > 1 else ''}"),
        ("devices", str(plan["devices"])),
        ("mesh", f"data={mesh['data']} x fsdp={mesh['fsdp']}"),
        ("batch", f"{plan['global_batch_size']} global, {batch} per device"),
        ("params", gib(plan["params_bytes_per_device"])),
        ("opt_state", gib(plan["opt_state_bytes_per_device"])),
        ("grads", gib(plan["grads_bytes_per_device"])),
        ("peak", f"{peak}  XLA temporaries of the step on one device ({source})"),
        ("total", gib(plan["total_bytes_per_device"]) + "  params + opt_state + peak"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    return "bytes per device\n" + "\n".join(lines)
