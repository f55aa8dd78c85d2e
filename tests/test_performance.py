"""The fast paths compute what the reference computes, mixed precision is what it says, the FLOP
count matches XLA's, and the benchmark script runs (never a speed threshold: timings belong to
benchmarks/train_step.py)."""

import importlib.util
import json
import math
import os
import platform
import subprocess
import sys

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import SMALL, random_params
from vit_jax import models
from vit_jax.models.attention import resolve_impl, softmax
from vit_jax.train import cost, host_memory
from vit_jax.train.step import make_train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ("fused", "xla")


def small_model(**overrides):
    fields = {**SMALL, "image_size": 16, **overrides}
    return models.create("Ti/4", num_classes=7, **fields)


def images(n=3, size=16, seed=1):
    return jax.random.uniform(jax.random.PRNGKey(seed), (n, size, size, 3), minval=-1, maxval=1)


@pytest.mark.parametrize(
    "posemb, classifier",
    [
        ("learned", "token"),
        ("learned", "map"),
        ("sincos2d+relative", "gap"),
        ("rope_axial", "token"),
        ("learned+rope_mixed", "token"),
    ],
)
def test_fast_attention_gives_the_reference_logits_and_gradients(posemb, classifier):
    reference = small_model(posemb=posemb, classifier=classifier, attention_impl="reference")
    params = random_params(reference)
    x = images()
    loss = lambda model: jax.value_and_grad(lambda p: jnp.sum(model.apply({"params": p}, x) ** 2))(
        params
    )
    want_logits = reference.apply({"params": params}, x)
    want_loss, want_grads = loss(reference)
    for impl in FAST:
        model = reference.clone(attention_impl=impl)
        np.testing.assert_allclose(model.apply({"params": params}, x), want_logits, atol=1e-5)
        got_loss, got_grads = loss(model)
        np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
        chex.assert_trees_all_close(got_grads, want_grads, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(
    jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU (none here)"
)
def test_cudnn_attention_gives_the_reference_logits_and_gradients_on_a_gpu():
    """cuDNN's flash attention takes 16-bit inputs: bf16 against the bf16 reference path, at
    bf16's tolerance (and `xla`, jax.nn.dot_product_attention's other path, likewise)."""
    reference = small_model(dtype="bfloat16", attention_impl="reference")
    params = random_params(reference)
    x = images()
    loss = lambda model: jax.value_and_grad(lambda p: jnp.sum(model.apply({"params": p}, x) ** 2))(
        params
    )
    want_logits, (want_loss, want_grads) = reference.apply({"params": params}, x), loss(reference)
    for impl in ("cudnn", "xla"):
        model = reference.clone(attention_impl=impl)
        np.testing.assert_allclose(model.apply({"params": params}, x), want_logits, atol=2e-2)
        got_loss, got_grads = loss(model)
        np.testing.assert_allclose(got_loss, want_loss, rtol=2e-2)
        chex.assert_trees_all_close(got_grads, want_grads, atol=5e-2, rtol=5e-2)


def test_the_fused_softmax_has_jax_softmax_values_and_derivatives():
    x = 20 * jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5, 7))  # large: max subtracted
    w = jax.random.normal(jax.random.PRNGKey(1), x.shape)
    np.testing.assert_allclose(softmax(x), jax.nn.softmax(x, axis=-1), rtol=1e-6, atol=1e-7)
    for fn in (softmax, lambda x: jax.nn.softmax(x, axis=-1)):
        loss = lambda x, fn=fn: jnp.sum(jnp.sin(fn(x)) * w)
        grad, hvp = jax.jvp(jax.grad(loss), (x,), (w,))  # second order too
        if fn is softmax:
            ours = grad, hvp
    np.testing.assert_allclose(ours[0], grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours[1], hvp, rtol=1e-4, atol=1e-5)


def test_every_implementation_declares_the_same_parameters_with_the_same_values():
    inits = [
        small_model(posemb="rope_mixed", attention_impl=impl).init(jax.random.PRNGKey(0), images())
        for impl in ("reference", *FAST)
    ]
    for other in inits[1:]:
        chex.assert_trees_all_equal(other, inits[0])


def test_fused_attention_applies_the_same_attention_dropout_as_the_reference():
    reference = small_model(attention_dropout_rate=0.3, attention_impl="reference")
    params, x, rngs = random_params(reference), images(), {"dropout": jax.random.PRNGKey(3)}
    want = reference.apply({"params": params}, x, train=True, rngs=rngs)
    got = reference.clone(attention_impl="fused").apply(
        {"params": params}, x, train=True, rngs=rngs
    )
    np.testing.assert_allclose(got, want, atol=1e-5)
    # and the dropout is real: another key, other logits
    other = reference.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(4)})
    assert np.abs(np.asarray(other) - np.asarray(want)).max() > 1e-3


def test_auto_is_the_fused_path_and_the_library_paths_refuse_dropout():
    assert resolve_impl("auto") == "fused"
    assert resolve_impl("cudnn") == "cudnn"
    with pytest.raises(ValueError, match="attention_impl='xla'.*no attention dropout"):
        small_model(attention_impl="xla", attention_dropout_rate=0.1)


def test_the_map_head_attends_the_way_the_model_says():
    """attention_impl reaches the MAP head's attention too: the reference path projects with
    [D, heads, head_dim] (and [heads, head_dim, D]) kernels, 4 products per attention layer;
    the fused path flattens them to matrices."""
    x = images()

    def kernel3_products(model):
        jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, x))(random_params(model))
        count = 0

        def walk(jaxpr):
            nonlocal count
            for eqn in jaxpr.eqns:
                count += eqn.primitive.name == "dot_general" and eqn.invars[1].aval.ndim == 3
            for sub in jax.extend.core.subjaxprs(jaxpr):
                walk(sub)

        walk(jaxpr.jaxpr)
        return count

    reference = small_model(classifier="map", attention_impl="reference")
    assert kernel3_products(reference) == 4 * (reference.num_layers + 1)
    assert kernel3_products(reference.clone(attention_impl="fused")) == 0


def test_collecting_attention_maps_takes_the_reference_path_with_any_impl():
    model = small_model(attention_impl="fused")
    params = random_params(model)
    maps = models.inspect(model, {"params": params}, images())["attention_weights"]
    np.testing.assert_allclose(np.asarray(maps).sum(-1), 1.0, rtol=1e-5)


def dot_dtypes(model, x):
    """(input dtypes, output dtype) of every matrix product in the model's forward pass."""
    params = random_params(model)
    jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, x))(params)
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
                found.append(
                    (tuple(str(v.aval.dtype) for v in eqn.invars), str(eqn.outvars[0].aval.dtype))
                )
        for sub in jax.extend.core.subjaxprs(jaxpr):
            walk(sub)

    walk(jaxpr.jaxpr)
    return found


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_bfloat16_products_take_bf16_inputs_and_accumulate_in_float32(impl):
    x = images()
    model = small_model(dtype="bfloat16", posemb="learned+relative", attention_impl=impl)
    dots = dot_dtypes(model, x)
    # patch embedding, q/k/v (fused or not), 2 attention products, out, 2 MLP, head
    assert len(dots) >= 2 * 5 + 2
    assert all(ins == ("bfloat16", "bfloat16") and out == "float32" for ins, out in dots), dots
    params = random_params(model)
    chex.assert_trees_all_equal_dtypes(
        params, jax.tree.map(lambda p: p.astype(jnp.float32), params)
    )
    logits = model.apply({"params": params}, x)
    assert logits.dtype == jnp.float32
    want = model.clone(dtype="float32").apply({"params": params}, x)
    np.testing.assert_allclose(logits, want, rtol=0.05, atol=0.05 * np.abs(want).max())


def test_float32_products_stay_float32():
    dots = dot_dtypes(small_model(), images())
    assert all(ins == ("float32", "float32") and out == "float32" for ins, out in dots)


def test_model_flops_of_published_sizes():
    # ViT-B/16 at 224: 17.6 GMACs; ViT-S/16: 4.6 GMACs (2 FLOPs per multiply-add)
    b16 = cost.model_flops(models.create("B/16", num_classes=1000, image_size=224))
    s16 = cost.model_flops(models.create("S/16", num_classes=1000, image_size=224))
    assert b16["forward"] == pytest.approx(2 * 17.58e9, rel=2e-3)
    assert s16["forward"] == pytest.approx(2 * 4.60e9, rel=2e-3)
    assert cost.train_flops(models.create("S/16", num_classes=1000, image_size=224), 32) == (
        32 * (3 * s16["forward"] - s16["patch_embed"])  # no gradient for the images
    )
    gray = cost.model_flops(models.create("S/16", num_classes=1000, image_size=224), channels=1)
    assert 3 * gray["patch_embed"] == s16["patch_embed"]  # one input plane instead of three
    assert {k: v for k, v in gray.items() if k not in ("patch_embed", "forward")} == {
        k: v for k, v in s16.items() if k not in ("patch_embed", "forward")
    }


def matmul_flops(jaxpr) -> int:
    """2 x the multiply-adds of every matrix product and convolution a jaxpr computes (with
    those of the jaxprs it calls; no loops: unrolled models only)."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            lhs, out = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
            total += 2 * math.prod(out) * math.prod(lhs[i] for i in contracting)
        elif eqn.primitive.name == "conv_general_dilated":
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, space)
            kernel = eqn.invars[1].aval.shape
            window = math.prod(kernel[i] for i in spec[1:])
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * window
        assert eqn.primitive.name not in ("scan", "while"), "count an unrolled model"
    for sub in jax.extend.core.subjaxprs(jaxpr):
        total += matmul_flops(sub)
    return total


@pytest.mark.parametrize(
    "overrides, channels",
    [
        ({}, 3),
        ({"classifier": "map", "representation_size": 48}, 3),
        ({"classifier": "gap", "patch_embed": "linear"}, 1),
        ({"classifier": "unpooled", "image_size": (32, 16), "patch_size": (8, 4)}, 3),
    ],
)
def test_analytic_flops_are_the_products_the_train_step_computes(overrides, channels):
    """The analytic count is exactly the matrix products in the step's jaxpr: forward, both
    gradients of every product, no gradient for the images."""
    import optax

    fields = {"image_size": 32, "hidden_size": 16, "num_layers": 2, "num_heads": 2,
              "mlp_dim": 24, **overrides}  # fmt: skip
    model = models.create("Ti/8", num_classes=10, **fields)
    tx = optax.adamw(1e-3)
    abstract = cost.abstract_train_state(model, tx, channels)
    batch = cost.abstract_batch(3, model.image_size, channels)
    if model.classifier == "unpooled":
        batch["label"] = jax.ShapeDtypeStruct((3, *model.image_size), jnp.int32)
    jaxpr = jax.make_jaxpr(make_train_step(model, tx, lambda s: 1e-3))(abstract, batch)
    assert matmul_flops(jaxpr.jaxpr) == cost.train_flops(model, 3, channels)


@pytest.mark.parametrize(
    "overrides, channels",
    [
        ({}, 3),
        ({"classifier": "map", "representation_size": 48}, 3),
        ({"classifier": "gap", "posemb": "rope_mixed"}, 1),  # grayscale, like the digits
    ],
)
def test_analytic_flops_match_xla_on_the_unrolled_step(overrides, channels):
    import optax

    model = models.create(
        "Ti/8", num_classes=10, image_size=64, hidden_size=128, num_layers=2, num_heads=2,
        mlp_dim=256, **overrides,
    )  # fmt: skip
    tx = optax.adamw(1e-3)
    step = make_train_step(model, tx, lambda s: 1e-3)
    abstract = cost.abstract_train_state(model, tx, channels)
    batch = cost.abstract_batch(4, (64, 64), channels)
    xla = cost.xla_flops(jax.jit(step).lower(abstract, batch).compile())
    analytic = cost.train_flops(model, 4, channels)
    # XLA also counts element-wise work (LayerNorm, softmax, GELU, AdamW): a few percent more.
    assert 0.85 < analytic / xla <= 1.0, (analytic, xla)


def test_published_peaks_and_mfu():
    assert cost.published_peak_flops("TPU v4") == 275e12
    assert cost.published_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert cost.published_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert cost.published_peak_flops("TPU v5 lite") == 197e12
    assert cost.published_peak_flops("cpu") is None
    # the longest name that fits: not L4's peak for an L40, nor the SXM figure for an NVL
    assert cost.published_peak_flops("NVIDIA L40") == 181e12
    assert cost.published_peak_flops("NVIDIA L40S") == 362e12
    assert cost.published_peak_flops("NVIDIA L4") == 121e12
    assert cost.published_peak_flops("NVIDIA H100 NVL") == 835e12
    assert cost.published_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert cost.published_peak_flops("TPU v4 lite") == 138e12
    assert cost.published_peak_flops("TPU v3") == 123e12 / 2  # a device is one of two cores
    assert cost.mfu(100e12, 400e12) == 0.25


def test_compilation_cache_is_used_unless_the_environment_chose_one(tmp_path):
    code = (
        "import jax, jax.numpy as jnp\n"
        "from vit_jax.train.parallel import use_compilation_cache\n"
        f"print(use_compilation_cache({str(tmp_path / 'cache')!r}))\n"
        "jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready()\n"
    )
    chosen_by_the_tests = (
        "JAX_COMPILATION_CACHE_DIR",
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
    )
    env = {k: v for k, v in os.environ.items() if k not in chosen_by_the_tests}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "cache")
    written = sorted(os.listdir(tmp_path / "cache"))
    assert written, "a program compiled in well under a second was not kept"
    long_ones = {**env, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1000"}  # its decision
    code_elsewhere = code.replace(str(tmp_path / "cache"), str(tmp_path / "long_ones"))
    out = subprocess.run(
        [sys.executable, "-c", code_elsewhere], env=long_ones, capture_output=True, text=True,
        cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert not os.listdir(tmp_path / "long_ones")
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "chosen")  # the environment's cache,
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # with its own rules
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert out.stdout.strip() == str(tmp_path / "chosen")
    assert os.listdir(tmp_path / "chosen")
    assert sorted(os.listdir(tmp_path / "cache")) == written  # untouched by the second run
    # A place that cannot be a cache folder: one line naming the field and the way out.
    (tmp_path / "a_file").write_text("")
    del env["JAX_COMPILATION_CACHE_DIR"], env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]
    out = subprocess.run(
        [sys.executable, "-c", code.replace(str(tmp_path / "cache"), str(tmp_path / "a_file"))],
        env=env, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1] == (
        f"ValueError: compilation_cache_dir={str(tmp_path / 'a_file')!r} cannot be written: "
        f"{tmp_path / 'a_file'} is a file, not a directory: name a folder you can write to, or "
        "'' to turn the cache off."
    )


def test_benchmark_script_times_contenders_and_plots_a_sweep(tmp_path, digits_dir):
    out = subprocess.run(
        [
            sys.executable, "benchmarks/train_step.py", "--model", "Ti/8", "--batch", "2",
            "--set", "num_layers=1,hidden_size=32,num_heads=2,mlp_dim=64",
            "--compare", "attention_impl=reference", "attention_impl=fused",
            "--sweep", "16,32", "--rounds", "1", "--steps", "1", "--inference", "--xla-check",
            "--loader", digits_dir,
            "--json", str(tmp_path / "r.jsonl"), "--plot", str(tmp_path / "sweep.png"),
        ],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"},  # one device
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in open(tmp_path / "r.jsonl")]
    assert [(r["name"], r["image_size"]) for r in records] == [
        ("attention_impl=reference", 16), ("attention_impl=fused", 16),
        ("attention_impl=reference", 32), ("attention_impl=fused", 32),
    ]  # fmt: skip
    model = models.create(
        "Ti/8", num_classes=1000, image_size=32, num_layers=1, hidden_size=32, num_heads=2,
        mlp_dim=64,
    )  # fmt: skip
    for r in records:
        assert r["img_per_sec"] > 0 and r["compile_seconds"] > 0 and r["inference_img_per_sec"] > 0
        assert 0 < r["trace_seconds"] < r["compile_seconds"]
        assert r["mfu_vs_matmul_peak"] == pytest.approx(
            r["model_flops_per_step"] / r["step_seconds"] / r["matmul_peak_flops"]
        )
        assert 0 < r["mfu_vs_matmul_peak"] and r["peak_memory_bytes"] > 0
        assert r["loader_img_per_sec"] > 0
        assert r["model_flops_per_step"] == cost.train_flops(
            model.clone(image_size=(r["image_size"],) * 2), 2
        )
        assert 0.3 < r["analytic_over_xla"] <= 1.0  # D=32: element-wise work weighs more
        assert r["step_seconds_by_round"] and len(r["step_seconds_by_round"]) == r["rounds"] == 1
    assert records[0]["speed_vs_first"] == 1.0
    assert records[2]["tokens"] == 17  # (32 / 8)^2 patches + the class token
    assert os.path.getsize(tmp_path / "sweep.png") > 1000
    assert "attention_impl=fused" in out.stdout  # the table


def test_broadcast_batch_has_the_gradients_of_a_plain_broadcast():
    from vit_jax.models.posemb.base import broadcast_batch

    logits = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 5, 5))
    bias = jax.random.normal(jax.random.PRNGKey(1), (1, 2, 5, 5))
    weights = jax.random.normal(jax.random.PRNGKey(2), (3, 2, 5, 5))
    loss = lambda bcast: lambda x, b: jnp.sum(jnp.tanh(x + bcast(b)) * weights)
    plain = lambda b: jnp.broadcast_to(b, (3, 2, 5, 5))
    want = jax.grad(loss(plain), argnums=(0, 1))(logits, bias)
    got = jax.grad(loss(lambda b: broadcast_batch(b, 3)), argnums=(0, 1))(logits, bias)
    chex.assert_trees_all_close(got, want, atol=1e-6)
    np.testing.assert_array_equal(broadcast_batch(bias, 3), plain(bias))


def _plain_rotation(x, angles, num_prefix_tokens=1):
    """The textbook RoPE: channel pairs (2j, 2j + 1) of the patch tokens turned by angle j."""
    a = angles[:, None] if angles.ndim == 2 else angles
    e, o = x[:, num_prefix_tokens:, :, 0::2], x[:, num_prefix_tokens:, :, 1::2]
    r = jnp.stack([e * jnp.cos(a) - o * jnp.sin(a), e * jnp.sin(a) + o * jnp.cos(a)], -1)
    return jnp.concatenate([x[:, :num_prefix_tokens], r.reshape(e.shape[:-1] + (-1,))], 1)


@pytest.mark.parametrize("per_head", [True, False], ids=["mixed-angles", "shared-angles"])
def test_rope_rotation_gradients_are_autodiffs_and_cosines_are_computed_once(per_head):
    """The rotation's written-out gradients (input and angles; angles per head as RoPE-Mixed
    learns them, or shared by the heads) equal autodiff's of the textbook formula, its cosine
    and sine table is bit-identical to jnp.cos / jnp.sin, and XLA evaluates that table once:
    no fused computation that evaluates a cosine or sine writes more elements than the table
    has (left alone, XLA re-evaluates them for every example, forward and backward)."""
    import re

    from vit_jax.models.posemb import rope

    batch, tokens, heads, half = 4, 15, 2, 4
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, tokens + 1, heads, 2 * half))
    weights = jax.random.normal(jax.random.PRNGKey(3), x.shape)
    frequencies = jax.random.normal(jax.random.PRNGKey(0), (heads if per_head else 1, half))
    positions = jnp.arange(tokens, dtype=jnp.float32)[:, None, None]

    def loss(rotation):
        def f(x, frequencies):
            angles = positions * frequencies  # [tokens, heads, half], learned like RoPE-Mixed
            return jnp.sum(rotation(x, angles if per_head else angles[:, 0]) * weights)

        return jax.jit(jax.grad(f, argnums=(0, 1)))

    fast = loss(lambda x, a: rope.rotate(x, a, num_prefix_tokens=1))
    chex.assert_trees_all_close(
        fast(x, frequencies), loss(_plain_rotation)(x, frequencies), atol=1e-4, rtol=1e-5
    )
    angles = positions * frequencies
    np.testing.assert_array_equal(
        rope.cos_sin(angles), jnp.stack([jnp.cos(angles), jnp.sin(angles)])
    )

    table = tokens * heads * half
    hlo = fast.lower(x, frequencies).compile().as_text()
    computations = re.findall(r"\n(%?[\w.\-]+ \([^\n]*\) -> ([^\n]*) \{\n.*?\n\})", hlo, re.S)
    assert any("cosine(" in body for body, _ in computations)
    for body, result in computations:
        if "cosine(" in body or "sine(" in body:
            sizes = [
                np.prod([int(d) for d in dims.split(",") if d])
                for dims in re.findall(r"\[([\d,]*)\]", result)
            ]
            assert max(sizes) <= 2 * table, f"cos/sin evaluated per example:\n{body[:400]}"


def _benchmark_module():
    """benchmarks/train_step.py as a module (a script, not part of the package)."""
    import importlib.util

    path = os.path.join(ROOT, "benchmarks", "train_step.py")
    spec = importlib.util.spec_from_file_location("benchmark_train_step", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_benchmark_host_memory_keep_after_jax_started_is_one_line(capsys):
    bench = _benchmark_module()
    jax.devices()  # this test process's backend has started: too late for malloc's arenas
    if platform.libc_ver()[0] != "glibc" or host_memory.malloc_arenas() == 1:
        pytest.skip("this process has one malloc arena (or no glibc): nothing to refuse")
    assert bench.main(["--host-memory", "keep", "--rounds", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: host_memory='keep' must be chosen before")


def test_benchmark_speed_ratio_pairs_the_contenders_round_by_round():
    bench = _benchmark_module()
    info = {"model_flops_per_step": 10**9}
    first = bench.Contender("a", None, 8, info, times=[1.0, 3.0, 1.0])  # round 2 ran slow
    second = bench.Contender("b", None, 8, info, times=[2.0, 6.0, 2.0])
    record = bench.report(second, 1e12, None, first)
    assert record["speed_vs_first"] == 0.5  # every round says half; medians alone say so too
    third = bench.Contender("c", None, 8, info, times=[0.5, 6.0, 4.0])  # twice as fast in round 1
    record = bench.report(third, 1e12, None, first)
    assert record["speed_vs_first"] == 0.5 and record["step_seconds"] == 4.0
    assert record["step_seconds_by_round"] == [0.5, 6.0, 4.0]
    # A contender of another batch is compared by img/s, and its record says its batch.
    bigger = bench.Contender("batch_size=16", None, 16, info, times=[2.0, 6.0, 2.0])
    record = bench.report(bigger, 1e12, None, first)
    assert record["speed_vs_first"] == 1.0 and record["batch"] == 16


def test_benchmark_builds_timm_of_each_contenders_architecture():
    """timm's counterpart follows the architecture (not our implementation choices), a
    contender timm cannot reproduce gets no timm ratio, and --timm with none at all is one
    error before anything compiles."""
    import argparse

    bench = _benchmark_module()
    args = argparse.Namespace(
        model="Ti/16", batch=8, set="num_layers=2", timm=True,
        compare=[
            "", "activation=gelu,classifier=gap", "posemb=relative", "dtype=bfloat16,scan=True"
        ],
    )  # fmt: skip
    planned = bench.plan(args, 32)
    base = planned[0].timm
    assert base == {
        "img_size": [32, 32], "patch_size": [16, 16], "embed_dim": 192, "depth": 2,
        "num_heads": 3, "mlp_ratio": 4.0, "num_classes": 1000, "global_pool": "token",
        "class_token": True, "pos_embed": "learn", "act_layer": "gelu_tanh",
        "proj_drop_rate": 0.0, "attn_drop_rate": 0.0, "drop_path_rate": 0.0,
    }  # fmt: skip
    assert planned[1].timm == {
        **base, "act_layer": "gelu", "global_pool": "avg", "class_token": False
    }  # fmt: skip
    assert planned[2].timm is None and planned[2].no_timm == "posemb=relative"
    assert planned[3].timm == base  # dtype and scan are ours to choose: the same timm model
    assert bench.timm_name(planned[1].timm, "float32", base) == (
        "timm (float32, global_pool=avg, class_token=False, act_layer=gelu)"
    )
    args.set, args.compare = "posemb=rope_axial", None
    with pytest.raises(ValueError, match="--timm: timm's VisionTransformer has no counterpart of"):
        bench.plan(args, 32)
    # timm's ratio is paired round by round, as speed_vs_first
    info = {"model_flops_per_step": 10**9}
    ours = bench.Contender("a", None, 8, info, times=[1.0, 3.0, 1.0])
    timm = bench.Contender("timm", None, 8, info, times=[2.0, 2.0, 2.0])
    assert bench.paired_speed(ours, timm) == 2.0  # a ratio of medians would say 1.0


def test_timm_counterpart_has_our_parameter_count():
    """The same architecture, parameter for parameter (timm and torch are optional)."""
    pytest.importorskip("timm", reason="timm (and torch) not installed: pip install -e '.[timm]'")
    from timm.models.vision_transformer import VisionTransformer

    bench = _benchmark_module()
    for overrides in ({}, {"classifier": "gap", "activation": "gelu"}, {"classifier": "map"}):
        model = models.create(
            "Ti/8", num_classes=10, image_size=32, num_layers=2, **overrides
        )  # fmt: skip
        ours = sum(x.size for x in jax.tree.leaves(random_params(model)))
        timm = sum(p.numel() for p in VisionTransformer(**bench.timm_kwargs(model)).parameters())
        assert timm == ours, overrides


def test_benchmark_reads_values_as_their_fields_types():
    bench = _benchmark_module()
    overrides = bench.parse_overrides("representation_size=None,posemb=none,batch_size=4")
    config = bench.make_config("Ti/16", 32, 2, {**overrides, "mesh.data": "1"})
    assert config.model.representation_size is None and config.model.posemb == "none"
    assert config.batch_size == 4 and config.mesh.data == 1
    assert bench.parse_overrides("posemb_grid=(2, 2),x=((1,2),[3,4]),dtype=float32") == {
        "posemb_grid": "(2, 2)",
        "x": "((1,2),[3,4])",
        "dtype": "float32",
    }
    # Fields are found where vit-train finds them: a section's as written, a top-level
    # training field as is, anything else in the model.
    config = bench.make_config(
        "Ti/16",
        32,
        2,
        {"model.dtype": "bfloat16", "total_steps": "7", "optimizer.learning_rate": "0.5"},
    )
    assert config.model.dtype == "bfloat16" and config.total_steps == 7
    assert config.optimizer.learning_rate == 0.5
    with pytest.raises(ValueError, match="model.scan='maybe' is not of type bool"):
        bench.make_config("Ti/16", 32, 2, {"scan": "maybe"})
    with pytest.raises(ValueError, match="^image_size=64: the image size is set by --image-size"):
        bench.make_config("Ti/16", 32, 2, {"dtype": "float32", "image_size": "64"})


def test_benchmark_passes_xla_options_to_one_contender_and_refuses_unknown_ones():
    bench = _benchmark_module()
    overrides = bench.parse_overrides(
        "dtype=bfloat16,xla.xla_cpu_enable_fast_math=False,xla.xla_cpu_experimental_ynn_fusion_type="
    )
    assert bench.xla_options(overrides) == {
        "xla_cpu_enable_fast_math": False,
        "xla_cpu_experimental_ynn_fusion_type": "",
    }
    config = bench.make_config("Ti/16", 32, 2, overrides)
    assert config.model.dtype == "bfloat16" and "xla." not in str(config)
    listed = bench.parse_overrides(  # a list-valued option keeps its commas
        "xla.xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_ELTWISE,"
        "LIBRARY_FUSION_TYPE_REDUCE,dtype=float32"
    )
    assert listed == {
        "xla.xla_cpu_experimental_ynn_fusion_type": (
            "LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE"
        ),
        "dtype": "float32",
    }
    assert bench.xla_options(listed)  # XLA takes the list
    with pytest.raises(ValueError, match="'bfloat16' in 'dtype=float32,bfloat16' is not FIELD="):
        bench.parse_overrides("dtype=float32,bfloat16")
    with pytest.raises(ValueError, match="xla_no_such_flag"):
        bench.xla_options({"xla.xla_no_such_flag": 1})
    out = subprocess.run(
        [sys.executable, "benchmarks/train_step.py", "--compare", "xla.xla_no_such_flag=1"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "xla_no_such_flag" in out.stderr


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--model", "X/16"], "variant='X/16' is not a known model"),
        (["--sweep", "32,a"], "--sweep 32,a: give image sizes"),
        (["--timm"], "--timm needs timm and torch"),
    ],
)
def test_benchmark_mistakes_are_one_line_before_anything_compiles(flags, message):
    """In a fresh process: what a user sees at the command line."""
    if flags == ["--timm"] and importlib.util.find_spec("timm") is not None:
        pytest.skip("timm is installed: --timm is no mistake here")
    out = subprocess.run(
        [sys.executable, "benchmarks/train_step.py", "--json", "", *flags],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and out.stderr.strip() == f"error: {out.stderr.strip()[7:]}"
    assert message in out.stderr and "compiling" not in out.stderr


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--compare", "dtype=float32", "dtpye=bfloat16"], "model.dtpye"),  # not the first
        (["--sweep", "32,40"], "(40, 40)"),  # nor the first size
        (["--compare", "image_size=64"], "the image size is set by --image-size"),
        (["--compare", "dtype"], "'dtype' in 'dtype' is not FIELD=VALUE"),
        (["--json", "/proc/nope/r.jsonl"], "--json='/proc/nope' cannot be written"),
        (["--sweep", "32", "--plot", "/proc/nope/p.png"], "--plot='/proc/nope' cannot be written"),
        (["--loader", "/proc/nope"], "--loader='/proc/nope' cannot be written"),
    ],
)
def test_benchmark_checks_every_contender_size_and_output_before_compiling(flags, message, capsys):
    bench = _benchmark_module()
    argv = ["--model", "Ti/16", "--image-size", "32", "--batch", "8", "--json", "", *flags]
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and "compiling" not in err


def test_benchmark_inference_takes_the_params_where_fsdp_placed_them():
    bench = _benchmark_module()
    overrides = bench.parse_overrides(
        "num_layers=1,hidden_size=32,num_heads=2,mlp_dim=64,mesh.fsdp=2,sharding.fsdp_min_size_mb=0"
    )
    config = bench.make_config("Ti/8", 16, 8, overrides)
    contender = bench.ours("fsdp", config, 16, inference=True, xla_check=False)
    contender.infer()  # compiled for replicated parameters, it refused the sharded ones
    assert contender.info["peak_memory_bytes"] > 0


def test_benchmark_refuses_zero_rounds_or_steps(capsys):
    bench = _benchmark_module()
    for flag in ("--rounds", "--steps", "--batch"):
        with pytest.raises(SystemExit) as exit_:
            bench.main([flag, "0"])
        assert exit_.value.code == 2
        assert f"argument {flag}: '0' is not a whole number >= 1" in capsys.readouterr().err


def test_bfloat16_rope_mixed_gradients_stay_close_to_float32():
    """The rotation's written-out gradient reads the rotated q and k, which are bf16 under
    dtype=bfloat16: the learned frequencies' gradients stay within 5% (relative L2) of
    float32's, like the projections' (measured: 0.3-1.4% and 0.7-1.1%)."""
    from flax.traverse_util import flatten_dict

    f32 = small_model(posemb="rope_mixed")
    params = random_params(f32)
    x, labels = images(4), jnp.array([0, 3, 5, 6])

    def grads(model):
        def loss(p):
            logp = jax.nn.log_softmax(model.apply({"params": p}, x))
            return -jnp.mean(logp[jnp.arange(4), labels])

        return flatten_dict(jax.jit(jax.grad(loss))(params), sep="/")

    want, got = grads(f32), grads(f32.clone(dtype="bfloat16"))
    checked = [k for k in want if k.endswith(("rope_frequencies", "query/kernel"))]
    assert sum(k.endswith("rope_frequencies") for k in checked) == SMALL["num_layers"]
    for k in checked:
        a, b = np.asarray(want[k]), np.asarray(got[k], np.float32)
        assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.05, k


def test_simulated_cpu_devices_share_the_one_measured_peak():
    """MFU divides a step's FLOPs by the peaks that ran it: on a CPU the processor's measured
    peak once, however many devices JAX_NUM_CPU_DEVICES simulates on it."""
    assert jax.device_count() == 8 and jax.devices()[0].platform == "cpu"
    assert cost.peak_holders() == jax.process_count() == 1


def test_profiler_window_is_clipped_to_the_run_and_says_when_it_is_not_whole(tmp_path):
    from vit_jax.train.profiling import StepProfiler

    # Inside the run: traced steps 3-4, nothing to say up front.
    whole = StepProfiler(str(tmp_path / "a"), 2, 2, total_steps=10)
    assert whole.plan(0) is None
    for done in range(2):
        whole.before(done)
    assert not whole.active
    whole.before(2)
    assert whole.active and whole.after(3, None) is None
    written = whole.after(4, None)
    assert written == f"profiler trace of steps 3-4 written to {tmp_path / 'a' / 'profile'}"
    assert not whole.active and whole.close() is None
    # The run ends inside the window: said up front, and the trace ends with the run.
    clipped = StepProfiler(str(tmp_path / "b"), 4, 5, total_steps=6)
    assert clipped.plan(0) == (
        "profile_start_step=4 (steps 5-9): the run ends at step 6; the trace stops there."
    )
    clipped.before(4)
    assert clipped.after(5, None) is None and clipped.after(6, None).startswith(
        "profiler trace of steps 5-6 written"
    )
    # Out of reach: past the end, or behind a resume; nothing is started.
    assert (
        StepProfiler("w", 6, 5, total_steps=6)
        .plan(0)
        .endswith("the run ends at step 6, so no profiler trace is written.")
    )
    behind = StepProfiler("w", 3, 5, total_steps=60)
    assert "this run resumes after step 5" in behind.plan(5)
    assert "its first traced step compiles inside the trace" in behind.plan(3)
    behind.before(5)
    assert not behind.active and StepProfiler("w", 0, 5, total_steps=6).plan(0) is None
    # A run stopped inside the window: the partial trace is written and said to be partial.
    stopped = StepProfiler(str(tmp_path / "c"), 1, 5, total_steps=60)
    stopped.before(1)
    stopped.after(2, None)
    assert stopped.close().endswith("profile, cut short: the run stopped after 2")
    failed = StepProfiler(str(tmp_path / "d"), 1, 5, total_steps=60)
    failed.before(1)  # and step 2 raised
    assert failed.close().endswith("profile: step 2 did not end")
