"""Times the project's train step (the one `vit_jax.main` runs), against itself and timm.

    python benchmarks/train_step.py                                  # ViT-S/16, 224, batch 32
    python benchmarks/train_step.py --compare dtype=float32 dtype=bfloat16 --timm
    python benchmarks/train_step.py --compare posemb=learned posemb=relative posemb=rope_axial
    python benchmarks/train_step.py --model B/16 --batch 8 --compare scan=False scan=True \\
        --set remat_policy=none
    python benchmarks/train_step.py --compare "" xla.xla_cpu_experimental_ynn_fusion_type=
    python benchmarks/train_step.py --model Ti/16 --sweep 64,128,192,256 \\
        --compare posemb=learned posemb=relative posemb=rope_mixed   # step time vs tokens (PNG)

Each contender is the base settings (--model, --image-size, --batch, --set) plus its own
overrides (`--compare`, each a comma-separated list of FIELD=VALUE: a model field such as
dtype, posemb, attention_impl, scan, remat_policy, a training field such as parallel,
grad_accum_steps, mesh.fsdp, or `xla.FLAG` for an XLA compiler option of that contender's step
alone, e.g. `xla.xla_cpu_experimental_ynn_fusion_type=` to compare XLA:CPU's dot libraries).
Every contender is built, compiled and then timed in alternation
(round r times contender 1, 2, ... in turn), so that a machine that slows down mid-run slows
every contender alike: compare ratios from one run, not figures from two.

Per contender: img/s and step time (median over rounds of the mean of --steps steps; every
round's time is in the JSON), its speed relative to the first contender (the median over
rounds of the ratio within each round, which cancels a round the machine ran slow), model
FLOPs per step (analytic, vit_jax.train.cost), MFU against the float32 2048x2048 matmul rate
measured in the same run (and against the device's published bf16 peak on GPU/TPU), compile
time (trace_seconds of it: tracing and lowering to StableHLO, before XLA), XLA's peak memory
(temporaries + arguments of the compiled step), inference img/s (--inference), XLA's own FLOP
count of the unrolled, unsharded step (--xla-check) and the img/s of the training loader at
that size (--loader DATA_DIR, on the embedded digits). With --timm (the optional `timm`
extra), timm's VisionTransformer of each contender's architecture (sizes, patch, classes,
pooling, activation, dropout rates: `timm_kwargs`), at the same resolution, batch and precision
(eager; torch.autocast to the contender's dtype unless float32), with AdamW and the same
gradient clipping, is timed in the same rounds, and each contender gets `speed_vs_timm`, paired
by round like speed_vs_first (a contender timm has no counterpart of, e.g. posemb=relative,
gets none). --host-memory keep sets this
process's malloc, and timm's worker's, to keep freed memory (as vit-train --host_memory=keep: the
step's temporaries stop page-faulting at every step).

Output: a table, JSON lines (--json, default benchmarks/results/train_step.jsonl), and with
--sweep a PNG of step time against the number of tokens per contender.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable

import jax
import numpy as np

from vit_jax.models import zoo
from vit_jax.tools import ArgumentParser
from vit_jax.train import command_line, cost, host_memory, optim, parallel
from vit_jax.train.config import base_config, model_config
from vit_jax.train.folders import writable_folder
from vit_jax.train.state import create_state, init_params
from vit_jax.train.step import make_eval_step, make_train_step, run_train_step

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SETTLE_SECONDS = 1.0


def parse_value(text: str):
    """An XLA option's value: '3' -> 3, '0.5' -> 0.5, 'True' -> True, else the string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def split_outside_brackets(text: str) -> list[str]:
    """'a=(1, (2, 3)),b=[4,5],c' -> ['a=(1, (2, 3))', 'b=[4,5]', 'c']: splits at the commas
    that no bracket encloses."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char in "([{") - (char in ")]}")
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    return [*items, text[start:]]


def parse_overrides(spec: str) -> dict[str, str]:
    """'dtype=bfloat16,scan=True' -> {"dtype": "bfloat16", "scan": "True"}: the values stay
    text, read as their field's type when applied (`make_config`, as vit-train reads
    --config.FIELD=VALUE). Commas inside brackets belong to the value ('posemb_grid=(7, 7)');
    an XLA option's value may itself be a list: 'xla.F=A,B,dtype=bfloat16' -> {"xla.F": "A,B",
    "dtype": "bfloat16"}."""
    overrides: dict[str, str] = {}
    key = None
    for item in filter(None, split_outside_brackets(spec)):
        name, sep, value = item.partition("=")
        if not sep and key is not None and key.startswith("xla."):
            overrides[key] = f"{overrides[key]},{item.strip()}"  # the XLA list goes on
            continue
        if not sep:
            raise ValueError(f"{item!r} in {spec!r} is not FIELD=VALUE")
        key = name.strip()
        overrides[key] = value.strip()
    return overrides


def make_config(model: str, image_size: int, batch: int, overrides: dict):
    """A training config (AdamW, 1000 classes) with `overrides` applied to the model, the
    training fields or the mesh, each value read as its field's type (text or a value).
    Raises ValueError for an unknown field, a value of the wrong type, or an image size, which
    --image-size and --sweep set."""
    config = base_config()
    config.model = model_config(model, image_size, num_classes=1000)
    config.batch_size = config.eval_batch_size = batch
    config.total_steps = 1000
    for key, value in overrides.items():
        if key.startswith("xla."):
            continue  # compiler options, see xla_options
        field = config_field(config, key)
        command_line.override(config, field, str(value))
        if tuple(config.model.image_size) != (image_size, image_size):
            raise ValueError(
                f"{key}={value}: the image size is set by --image-size (or --sweep), the same "
                "for every contender."
            )
    return config


def config_field(config, key: str) -> str:
    """The dotted config field of a contender's key: a section's field as written
    ('mesh.fsdp', 'optimizer.learning_rate', 'model.dtype'), a top-level training field as
    is ('batch_size', 'total_steps'), anything else a model field ('dtype' -> 'model.dtype')."""
    section = key.split(".")[0]
    if "." in key and section in config:
        return key
    if key in config and key != "model":
        return key
    return f"model.{key}"


@dataclasses.dataclass
class Contender:
    """One thing to time: `step()` runs one training step and waits for it."""

    name: str
    step: Callable[[], None]
    images_per_step: int
    info: dict
    infer: Callable[[], None] | None = None
    times: list[float] = dataclasses.field(default_factory=list)
    infer_times: list[float] = dataclasses.field(default_factory=list)


def random_batch(
    batch: int, height: int, *, width: int | None = None, num_classes: int = 1000, seed: int = 0
) -> dict:
    rng = np.random.default_rng(seed)
    shape = (batch, height, height if width is None else width, 3)
    return {
        "image": rng.uniform(-1, 1, shape).astype(np.float32),
        "label": rng.integers(0, num_classes, (batch,)).astype(np.int32),
    }


def xla_options(overrides: dict) -> dict:
    """The `xla.FLAG=VALUE` overrides as XLA compiler options for this contender's step alone:
    `xla.xla_cpu_experimental_ynn_fusion_type=` -> {"xla_cpu_experimental_ynn_fusion_type": ""}."""
    options = {k[4:]: parse_value(str(v)) for k, v in overrides.items() if k.startswith("xla.")}
    if options:  # an unknown flag or a bad value: one line now, not a traceback after building
        try:
            jax.jit(lambda x: x + 1).lower(np.float32(0)).compile(compiler_options=options)
        except jax.errors.JaxRuntimeError as e:
            raise ValueError(f"XLA refuses {options}: {str(e).splitlines()[0]}") from None
    return options


def ours(
    name: str,
    config,
    image_size: int,
    *,
    inference: bool,
    xla_check: bool,
    compiler_options: dict | None = None,
    checked: cost.Planned | None = None,
) -> Contender:
    """The project's train step for `config` (`checked`: its `cost.check_config`, if made
    already), placed and compiled as the training loop does."""
    planned = checked or cost.check_config(config, jax.device_count())
    model, train = planned.model, planned.train
    tx, schedule = optim.make_optimizer(planned.optimizer, train.total_steps)
    par = parallel.make(train.parallel, mesh=config.mesh, options=planned.sharding)
    rng = jax.random.PRNGKey(0)
    abstract = cost.abstract_train_state(model, tx)
    shardings = par.state_shardings(abstract)
    step_fn = run_train_step(model, train, tx, schedule, axis_name=par.axis_name)
    train_step = par.compile_train(step_fn, shardings)
    state = par.put_state(
        jax.jit(lambda r: create_state(init_params(model, r, 3), tx, r), out_shardings=shardings)(
            rng
        )
    )
    labels = {"num_classes": model.num_classes}
    batch = par.put_batch(random_batch(train.batch_size, image_size, **labels))
    start = time.perf_counter()
    lowered = train_step.lower(state, batch)
    traced = time.perf_counter()
    compiled = lowered.compile(compiler_options=compiler_options or None)
    compile_seconds, trace_seconds = time.perf_counter() - start, traced - start
    memory = compiled.memory_analysis()
    holder = {"state": state}

    def step():
        holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready(metrics)

    step()  # first call: warm caches
    info = {
        "model_flops_per_step": cost.train_flops(model, train.batch_size),
        "compile_seconds": compile_seconds,
        "trace_seconds": trace_seconds,
        "peak_memory_bytes": (
            None if memory is None else memory.temp_size_in_bytes + memory.argument_size_in_bytes
        ),
        "num_params": sum(x.size for x in jax.tree.leaves(abstract["params"])),
        "tokens": model.grid[0] * model.grid[1] + model.num_prefix_tokens,
        "dtype": str(config.model.dtype),
    }
    if xla_check:
        info.update(
            xla_check_flops(model, tx, schedule, train.batch_size, image_size, compiler_options)
        )
    infer = None
    if inference:
        eval_batch = par.put_batch(
            {
                **random_batch(train.batch_size, image_size, **labels),
                "mask": np.ones(train.batch_size, np.float32),
            }
        )
        eval_step = (  # with the contender's XLA options, as its train step
            par.compile_eval(make_eval_step(model, axis_name=par.axis_name), shardings["params"])
            .lower(holder["state"]["params"], eval_batch)
            .compile(compiler_options=compiler_options or None)
        )
        infer = lambda: jax.block_until_ready(eval_step(holder["state"]["params"], eval_batch))
        infer()
    return Contender(name, step, train.batch_size, info, infer)


def xla_check_flops(
    model, tx, schedule, batch: int, image_size: int, compiler_options: dict | None = None
) -> dict:
    """XLA's FLOP count of the same step unrolled (scan=False, no accumulation loop) on one
    device, next to the analytic count: {"xla_flops_per_step", "analytic_over_xla"}."""
    unrolled = model.clone(scan=False)
    step = make_train_step(unrolled, tx, schedule)
    abstract = cost.abstract_train_state(unrolled, tx)
    compiled = (
        jax.jit(step)
        .lower(abstract, cost.abstract_batch(batch, (image_size,) * 2))
        .compile(compiler_options=compiler_options or None)
    )
    flops = cost.xla_flops(compiled)
    analytic = cost.train_flops(unrolled, batch)
    return {
        "xla_flops_per_step": flops,
        "analytic_over_xla": None if not flops else analytic / flops,
    }


class NoTimmCounterpart(ValueError):
    """A model timm's VisionTransformer cannot reproduce (another position embedding, ...)."""


def timm_kwargs(model) -> dict:
    """Keyword arguments of timm's VisionTransformer for the same architecture as `model` (a
    resolved VisionTransformer of ours): sizes, patch, classes, pooling, activation, dropout
    rates. Implementation choices of ours (dtype, attention_impl, scan, remat_policy,
    patch_embed, param_dtype) cost timm nothing to match. Raises NoTimmCounterpart naming the
    field timm has no counterpart of."""
    if model.posemb not in ("learned", "none"):
        raise NoTimmCounterpart(f"posemb={model.posemb}")
    if model.representation_size is not None:
        raise NoTimmCounterpart(f"representation_size={model.representation_size}")
    pools = {"token": ("token", True), "gap": ("avg", False), "map": ("map", False)}
    if model.classifier not in pools:
        raise NoTimmCounterpart(f"classifier={model.classifier}")
    global_pool, class_token = pools[model.classifier]
    mlp_ratio = model.mlp_dim / model.hidden_size
    if int(model.hidden_size * mlp_ratio) != model.mlp_dim:  # timm's MLP: int(D * ratio)
        raise NoTimmCounterpart(f"mlp_dim={model.mlp_dim} (not a ratio timm gives back)")
    return {
        "img_size": list(model.image_size),
        "patch_size": list(model.patch_size),
        "embed_dim": model.hidden_size,
        "depth": model.num_layers,
        "num_heads": model.num_heads,
        "mlp_ratio": mlp_ratio,
        "num_classes": model.num_classes,
        "global_pool": global_pool,
        "class_token": class_token,
        "pos_embed": "learn" if model.posemb == "learned" else "none",
        "act_layer": model.activation,  # timm's names: gelu, gelu_tanh
        "proj_drop_rate": model.dropout_rate,
        "attn_drop_rate": model.attention_dropout_rate,
        "drop_path_rate": model.stochastic_depth,
    }


def timm_name(kwargs: dict, dtype: str, base: dict) -> str:
    """'timm (float32)', or with the fields (architecture, batch, clipping) that differ from
    the base contender's timm run: 'timm (float32, act_layer=gelu)'."""
    differ = [f"{k}={v}" for k, v in kwargs.items() if base.get(k) != v]
    return f"timm ({', '.join([dtype, *differ])})"


def timm_contender(
    name: str,
    kwargs: dict,
    batch: int,
    dtype: str,
    *,
    flops_per_step: int,
    grad_clip_norm: float | None,
    inference: bool,
    host_memory_policy: str = "system",
) -> Contender:
    """timm's VisionTransformer built with `kwargs` (`timm_kwargs`), in eager PyTorch with
    AdamW and our gradient clipping, torch.autocast to `dtype` unless float32, on the GPU when
    JAX runs on one, in a worker process (`timm_worker`) so that PyTorch's and XLA's thread
    pools never compete: each process sleeps while the other is timed. The worker's malloc
    follows `host_memory_policy`, as ours does (--host-memory). Its model FLOPs are ours for
    the same architecture, `flops_per_step`."""
    import subprocess

    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    spec = json.dumps([kwargs, batch, dtype, grad_clip_norm, device, host_memory_policy])
    worker = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--timm-worker", spec],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    info = json.loads(worker.stdout.readline())

    def ask(command: str) -> None:
        worker.stdin.write(command + "\n")
        worker.stdin.flush()
        if worker.stdout.readline().strip() != "ok":
            raise RuntimeError(f"the timm worker failed on {command!r}")

    return Contender(
        name,
        lambda: ask("step"),
        batch,
        {"model_flops_per_step": flops_per_step, "dtype": dtype, **info},
        (lambda: ask("infer")) if inference else None,
    )


def timm_worker(spec: str) -> int:
    """The worker process of `timm_contender`: builds the model, then runs one train step or
    forward pass per line read ("step" / "infer") and answers "ok"."""
    kwargs, batch, dtype, clip, device, policy = json.loads(spec)
    host_memory.apply(policy)  # before PyTorch starts its threads
    import torch
    from timm.models.vision_transformer import VisionTransformer

    torch.set_num_threads(os.cpu_count() or 1)
    net = VisionTransformer(**kwargs).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    height, width = kwargs["img_size"]
    data = random_batch(batch, height, width=width, num_classes=kwargs["num_classes"])
    images = torch.from_numpy(data["image"]).permute(0, 3, 1, 2).contiguous().to(device)
    labels = torch.from_numpy(data["label"]).long().to(device)
    autocast = lambda: torch.autocast(
        device, dtype=getattr(torch, dtype), enabled=dtype != "float32"
    )
    synchronize = torch.cuda.synchronize if device == "cuda" else lambda: None

    def step():
        net.train()
        with autocast():
            loss = torch.nn.functional.cross_entropy(net(images), labels)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        synchronize()

    def infer():
        net.eval()
        with torch.no_grad(), autocast():
            net(images)
        synchronize()

    step()
    infer()
    shape = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    info = {
        "timm_model": f"VisionTransformer({shape})",
        "num_params": sum(p.numel() for p in net.parameters()),
    }
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        {"step": step, "infer": infer}[line.strip()]()
        print("ok", flush=True)
    return 0


def time_rounds(contenders: list[Contender], rounds: int, steps: int) -> list[float]:
    """Alternates the contenders for `rounds` rounds of `steps` steps each (odd rounds in reverse
    order); also measures the float32 matmul peak once per round (returned, one per round)."""
    peaks = []
    for r in range(rounds):
        peaks.append(cost.measured_matmul_flops())
        # Every other round in reverse order, and a pause before each contender so that the
        # previous one's threads (another process's, for timm) have gone idle.
        for c in contenders if r % 2 == 0 else contenders[::-1]:
            time.sleep(SETTLE_SECONDS)
            start = time.perf_counter()
            for _ in range(steps):
                c.step()
            c.times.append((time.perf_counter() - start) / steps)
            if c.infer is not None:
                start = time.perf_counter()
                for _ in range(steps):
                    c.infer()
                c.infer_times.append((time.perf_counter() - start) / steps)
    return peaks


def report(c: Contender, matmul_peak: float, published: float | None, base: Contender) -> dict:
    """One JSON record of a timed contender."""
    step_seconds = float(np.median(c.times))
    record = {
        "name": c.name,
        "img_per_sec": c.images_per_step / step_seconds,
        "step_seconds": step_seconds,
        "step_seconds_min": float(np.min(c.times)),
        "rounds": len(c.times),
        "step_seconds_by_round": [float(t) for t in c.times],
        "speed_vs_first": paired_speed(c, base),
        "batch": c.images_per_step,
        **c.info,
        "matmul_peak_flops": matmul_peak,
    }
    flops = c.info.get("model_flops_per_step")
    holders = 1 if "timm_model" in c.info else cost.peak_holders()  # timm runs on one device
    per_device = None if flops is None else flops / step_seconds / holders
    record["mfu_vs_matmul_peak"] = None if per_device is None else cost.mfu(per_device, matmul_peak)
    record["mfu_vs_published_peak"] = (
        None if per_device is None or published is None else cost.mfu(per_device, published)
    )
    if c.infer_times:
        record["inference_img_per_sec"] = c.images_per_step / float(np.median(c.infer_times))
    return record


def paired_speed(c: Contender, other: Contender) -> float:
    """c's img/s over `other`'s, paired: each round's ratio, then the median, so that a round
    in which the machine was slow for everyone does not tilt it."""
    return float(
        np.median(
            (c.images_per_step / np.asarray(c.times))
            / (other.images_per_step / np.asarray(other.times))
        )
    )


def format_table(records: list[dict]) -> str:
    cols = [
        ("name", "{}"),
        ("img_per_sec", "{:.2f}"),
        ("speed_vs_first", "{:.2f}x"),
        ("speed_vs_timm", "{:.2f}x"),
        ("step_seconds", "{:.3f}"),
        ("mfu_vs_matmul_peak", "{:.2f}"),
        ("compile_seconds", "{:.1f}"),
        ("trace_seconds", "{:.1f}"),
        ("peak_memory_bytes", "{}"),
        ("inference_img_per_sec", "{:.1f}"),
        ("analytic_over_xla", "{:.3f}"),
    ]
    cols = [(k, f) for k, f in cols if any(r.get(k) is not None for r in records)]
    cell = lambda r, k, f: (
        "-"
        if r.get(k) is None
        else (f"{r[k] / 2**20:,.0f} MiB" if k == "peak_memory_bytes" else f.format(r[k]))
    )
    rows = [[k for k, _ in cols]] + [[cell(r, k, f) for k, f in cols] for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows
    )


@dataclasses.dataclass
class Planned:
    """One contender of ours, checked but not yet built: its name, overrides, config, its
    `cost.check_config`, XLA options and, with --timm, timm's counterpart (`timm_kwargs`; None
    if timm has none, `no_timm` says why)."""

    name: str
    overrides: dict
    config: object
    checked: cost.Planned
    compiler_options: dict
    timm: dict | None = None
    no_timm: str | None = None


def plan(args, image_size: int) -> list[Planned]:
    """Every contender at `image_size`, each config checked (`cost.check_config`), each XLA
    option tried and, with --timm, timm's counterpart found, so that a mistake in any of them
    is one message before anything compiles."""
    base = parse_overrides(args.set or "")
    planned = []
    for spec in args.compare or [""]:
        overrides = {**base, **parse_overrides(spec)}
        config = make_config(args.model, image_size, args.batch, overrides)
        checked = cost.check_config(config, jax.device_count())
        p = Planned(spec or "vit_jax", overrides, config, checked, xla_options(overrides))
        if args.timm:
            try:
                p.timm = timm_kwargs(checked.model)
            except NoTimmCounterpart as e:
                p.no_timm = str(e)
        planned.append(p)
    if args.timm and all(p.timm is None for p in planned):
        raise ValueError(
            f"--timm: timm's VisionTransformer has no counterpart of {planned[0].no_timm} (it "
            "reproduces learned or no position embeddings, the token/gap/map classifiers and "
            "no representation layer): drop --timm, or compare such a model with --compare."
        )
    return planned


def run(args, image_size: int, planned: list[Planned]) -> list[dict]:
    """Builds, times and reports the `planned` contenders (and timm's) at `image_size`."""
    contenders, counterpart = [], {}  # our contender's name -> its timm contender's name
    runs = {  # what timm's run of each contender is: architecture, batch, clipping
        p.name: {
            **p.timm,
            "batch": p.checked.train.batch_size,
            "grad_clip_norm": p.checked.optimizer.grad_clip_norm,
        }
        for p in planned
        if p.timm is not None
    }
    base = next(iter(runs.values()), {})
    for p in planned:
        print(f"compiling {p.name} at {image_size} px ...", file=sys.stderr, flush=True)
        ours_contender = ours(
            p.name,
            p.config,
            image_size,
            inference=args.inference,
            xla_check=args.xla_check,
            compiler_options=p.compiler_options,
            checked=p.checked,
        )
        contenders.append(ours_contender)
        if p.timm is None:
            if args.timm:
                print(f"{p.name}: no timm ratio (timm has no {p.no_timm})", file=sys.stderr)
            continue
        dtype = str(p.config.model.dtype)
        name = counterpart[p.name] = timm_name(runs[p.name], dtype, base)
        if not any(c.name == name for c in contenders):
            contenders.append(
                timm_contender(
                    name,
                    p.timm,
                    runs[p.name]["batch"],
                    dtype,
                    flops_per_step=ours_contender.info["model_flops_per_step"],
                    grad_clip_norm=runs[p.name]["grad_clip_norm"],
                    inference=args.inference,
                    host_memory_policy=args.host_memory,
                )
            )
    peaks = time_rounds(contenders, args.rounds, args.steps)
    device = jax.devices()[0]
    published = cost.published_peak_flops(device.device_kind) if device.platform != "cpu" else None
    by_name = {c.name: c for c in contenders}
    records = []
    for c in contenders:
        record = report(c, max(peaks), published, contenders[0])
        if c.name in counterpart:  # paired by round, as speed_vs_first
            record["speed_vs_timm"] = paired_speed(c, by_name[counterpart[c.name]])
            record["timm_counterpart"] = counterpart[c.name]
        records.append(record)
    for r in records:
        r.update(
            image_size=image_size,
            model=args.model,
            device=device.device_kind,
            devices=jax.device_count(),
            jax=jax.__version__,
            host_memory=args.host_memory,
        )
    return records


def loader_img_per_sec(data_dir: str, image_size: int, batch: int, batches: int = 20) -> float:
    """Images per second of the training loader (decode, inception crop, flip, resize to
    `image_size`) on the embedded digits, built in `data_dir` if missing: what one process's
    input pipeline can feed a step, with the data.* defaults."""
    from vit_jax import data
    from vit_jax.data.options import DataOptions

    data.prepare_digits(data_dir)
    dataset = data.open_dataset(DataOptions(name="sklearn_digits", data_dir=data_dir))
    stream = iter(
        data.train_loader(dataset, image_size=(image_size,) * 2, global_batch_size=batch, seed=0)
    )
    next(stream)  # worker start-up
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches * batch / (time.perf_counter() - start)


def plot_sweep(records: list[dict], path: str) -> None:
    """Step time against the number of tokens, one line per contender."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["name"] for r in records):
        rs = sorted((r for r in records if r["name"] == name), key=lambda r: r["tokens"])
        ax.plot([r["tokens"] for r in rs], [r["step_seconds"] for r in rs], "o-", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens per image")
    ax.set_ylabel("train step time (s)")
    first = records[0]
    ax.set_title(f"ViT-{first['model']}, batch {first['batch']}, {first['device']}")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def at_least_one(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def output_folders(args) -> None:
    """Makes and checks the folders that --json, --plot (with --sweep) and --loader write into,
    before anything is timed; raises ValueError naming the flag."""
    for flag, folder in (
        ("--json", args.json and os.path.dirname(os.path.abspath(args.json))),
        ("--plot", args.sweep and os.path.dirname(os.path.abspath(args.plot))),
        ("--loader", args.loader),
    ):
        if folder:
            writable_folder(folder, flag, f"give {flag} a place you can write to")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="S/16", help="zoo variant, e.g. S/16, B/16, Ti/16")
    parser.add_argument("--image-size", type=at_least_one, default=224)
    parser.add_argument("--batch", type=at_least_one, default=32, help="global batch")
    parser.add_argument("--set", default="", help="overrides for every contender: F=V,F=V")
    parser.add_argument("--compare", nargs="*", help="one override list per contender")
    parser.add_argument("--timm", action="store_true", help="time timm alongside (timm extra)")
    parser.add_argument("--inference", action="store_true", help="also time the eval forward")
    parser.add_argument("--xla-check", action="store_true", help="XLA's FLOPs of the step")
    parser.add_argument("--rounds", type=at_least_one, default=3)
    parser.add_argument(
        "--steps", type=at_least_one, default=3, help="steps per contender per round"
    )
    parser.add_argument("--sweep", default="", help="image sizes, e.g. 64,128,192,256")
    parser.add_argument("--json", default=os.path.join(RESULTS, "train_step.jsonl"))
    parser.add_argument("--plot", default=os.path.join(RESULTS, "train_step_tokens.png"))
    parser.add_argument(
        "--loader", metavar="DATA_DIR", help="also time the digits training loader at the size"
    )
    parser.add_argument(
        "--host-memory",
        choices=host_memory.POLICIES,
        default="system",
        help="malloc policy of this process and timm's worker, as vit-train's --host_memory",
    )
    parser.add_argument("--timm-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.timm_worker:
        return timm_worker(args.timm_worker)
    if args.timm:  # on a GPU, XLA would otherwise take 75% of its memory before timm starts
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:  # every mistake that can be found before compiling anything: one line, status 2
        host_memory.apply(args.host_memory)  # first: checking the contenders starts JAX
        zoo.decode_variant(args.model)
        if args.timm and importlib.util.find_spec("timm") is None:
            raise ValueError("--timm needs timm and torch: pip install -e '.[timm]'")
        try:
            sizes = [int(s) for s in args.sweep.split(",")] if args.sweep else [args.image_size]
        except ValueError:
            raise ValueError(f"--sweep {args.sweep}: give image sizes, e.g. 64,128") from None
        planned = {size: plan(args, size) for size in sizes}
        output_folders(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    records = []
    for size in sizes:
        try:
            records += run(args, size, planned[size])
        except ValueError as e:  # what only building a contender finds (e.g. its shardings)
            print(f"error: {e}", file=sys.stderr)
            return 2
        if args.loader:
            rate = loader_img_per_sec(args.loader, size, args.batch)
            for r in records:
                if r["image_size"] == size:
                    r["loader_img_per_sec"] = rate
            print(f"loader: {rate:,.0f} img/s at {size} px", flush=True)
        print(format_table([r for r in records if r["image_size"] == size]), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    if args.sweep:
        plot_sweep(records, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
