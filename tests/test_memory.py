"""The memory plan: bytes per device of the train state by the sharding rule (checked against a
published parameter count and against a real 8-device placement), the compiled step's XLA
temporaries, and the `vit_jax.tools.memory` command line."""

import json
import os

import jax
import jax.numpy as jnp
import pytest

from tests.conftest import SMALL
from vit_jax.tools import memory as memory_tool
from vit_jax.train import cost, optim, sharding
from vit_jax.train.config import base_config, model_config, validate
from vit_jax.train.sharding import MeshOptions, ShardingOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIT_H14_PARAMS = 632_045_800  # ViT-H/14, 1000-class head, 224 px (published count)
# The published ViT-H/14 (no pre-logits layer) for ImageNet-1k, at 224 px.
IMAGENET_HEAD = [
    "--config.model.num_classes=1000",
    "--config.model.image_size=(224,224)",
    "--config.batch_size=4096",
    "--config.eval_batch_size=4096",
]
FSDP64 = ["--devices=64", "--config.mesh.fsdp=64", "--config.mesh.data=1", "--no-compile"]


def tool_json(capsys, *argv) -> dict:
    """The JSON object `python -m vit_jax.tools.memory ARGV --json` prints (exit code 0)."""
    assert memory_tool.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def tiny_config(**overrides):
    """A compiled-in-seconds model (width 32, 2 blocks, 8x8 images of 2x2 patches)."""
    config = base_config()
    config.model = model_config("Ti/2", 8, num_classes=10, **SMALL)
    config.batch_size = config.eval_batch_size = 64
    config.sharding.fsdp_min_size_mb = 0.0  # the tiny tensors are sharded too
    for key, value in overrides.items():
        section, _, field = key.rpartition(".")
        (config[section] if section else config)[field] = value
    return config


@pytest.mark.parametrize("min_size_mb, tolerance", [(0, 0.02), (None, 0.20)])
def test_vit_h14_on_64_fsdp_devices_holds_a_64th_of_the_published_parameters(
    capsys, min_size_mb, tolerance
):
    flags = [f"--config={ROOT}/configs/cifar10.py:variant=H/14", *FSDP64, *IMAGENET_HEAD]
    if min_size_mb is not None:
        flags.append(f"--config.sharding.fsdp_min_size_mb={min_size_mb}")
    plan = tool_json(capsys, *flags)
    expected = VIT_H14_PARAMS * 4 / 64
    assert plan["devices"] == 64 and plan["mesh"] == {"data": 1, "fsdp": 64}
    assert plan["params_bytes_per_device"] == pytest.approx(expected, rel=tolerance)
    assert plan["grads_bytes_per_device"] == plan["params_bytes_per_device"]
    # AdamW keeps mu and nu, each shaped (and placed) like the parameters.
    opt_ratio = plan["opt_state_bytes_per_device"] / plan["params_bytes_per_device"]
    assert opt_ratio == pytest.approx(2, rel=0.03)
    assert plan["peak_bytes_per_device"] is None and plan["peak_source"] is None


def test_exact_vit_h14_count_and_an_unset_class_count_taken_as_1000():
    config = base_config()
    config.data.name = "imagenet2012"  # RGB, as its tfds definition says (no data is read)
    config.model = model_config("H/14", 224)  # num_classes unset: the dataset's at train time
    config.batch_size = config.eval_batch_size = 4096
    config.mesh.fsdp, config.mesh.data = 64, 1
    config.sharding.fsdp_min_size_mb = 0.0
    plan = cost.plan_memory(config, devices=64, compile_step=False)
    assert plan["num_params"] == VIT_H14_PARAMS
    assert plan["num_classes"] == 1000 and plan["num_classes_assumed"]
    # Only the head bias [1000] and the 32 blocks' q, k, v biases [16 heads, 80] have no
    # dimension that 64 divides: they stay replicated.
    replicated = 1000 + 32 * 3 * 16 * 80
    sharded = VIT_H14_PARAMS - replicated
    assert plan["params_bytes_per_device"] == sharded * 4 // 64 + replicated * 4


def device0_bytes(tree) -> int:
    """Bytes of `tree`'s arrays held by device 0."""
    device = jax.devices()[0]
    return sum(
        shard.data.nbytes
        for x in jax.tree.leaves(tree)
        for shard in x.addressable_shards
        if shard.device == device
    )


def test_the_plan_matches_a_real_8_device_fsdp_placement_and_compiles_a_peak():
    assert jax.device_count() == 8
    fsdp1 = cost.plan_memory(tiny_config(), devices=8, compile_step=False)
    fsdp8 = cost.plan_memory(tiny_config(**{"mesh.fsdp": 8, "mesh.data": 1}), devices=8)
    assert fsdp8["mesh"] == {"data": 1, "fsdp": 8}
    ratio = fsdp8["params_bytes_per_device"] / fsdp1["params_bytes_per_device"]
    assert 1 / 8 <= ratio < 1.2 / 8  # a few leaves (the 10-class head bias) stay replicated
    assert fsdp1["params_bytes_per_device"] == 4 * fsdp1["num_params"]
    # The plan against reality: place zeros of the state's shapes on an 8-device fsdp mesh.
    settings = validate(tiny_config(**{"mesh.fsdp": 8, "mesh.data": 1}))
    tx, _ = optim.make_optimizer(settings.optimizer, settings.train.total_steps)
    abstract = cost.abstract_train_state(settings.model, tx, channels=1)  # grayscale digits
    mesh = sharding.make_mesh(MeshOptions(data=1, fsdp=8))
    where = sharding.state_shardings(abstract, mesh, ShardingOptions(fsdp_min_size_mb=0.0))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract)
    placed = jax.device_put(zeros, where)
    assert device0_bytes(placed["params"]) == fsdp8["params_bytes_per_device"]
    assert device0_bytes(placed["opt_state"]) == fsdp8["opt_state_bytes_per_device"]
    assert device0_bytes(placed) == fsdp8["state_bytes_per_device"]
    # The compiled step (per-device batch 64 / 8 = 8) on the CPU backend.
    assert fsdp8["per_device_batch_size"] == 8
    peak = fsdp8["peak_bytes_per_device"]
    assert isinstance(peak, int) and peak > 0
    assert fsdp8["peak_source"] == "xla:cpu proxy"
    assert fsdp8["total_bytes_per_device"] == fsdp8["state_bytes_per_device"] + peak


def test_cli_prints_a_table_and_refuses_user_errors_in_one_line(capsys):
    config = f"--config={ROOT}/configs/digits.py"
    tiny = ["--config.model.image_size=(8,8)", "--config.batch_size=64"]
    assert memory_tool.main([config, *tiny, "--devices=8", "--no-compile"]) == 0
    out = capsys.readouterr().out
    assert "data=8 x fsdp=1" in out and "params" in out
    for bad in (
        ["--devices=64", "--config.mesh.fsdp=7", "--no-compile"],  # 7 does not divide 64
        ["--devices=8", "--config.batch_size=12", "--no-compile"],  # nor does 8 divide 12
        ["--config.optimizer.nmae=sgd", "--no-compile"],
        ["--config.data.name=no_such_dataset", "--no-compile"],
    ):
        assert memory_tool.main([config, *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert memory_tool.main(["--no-compile"]) == 2
    assert capsys.readouterr().err.startswith("error: --config")
    for flag in ("--help", "-h"):  # the usage and every flag, status 0 (absl's own: 1)
        assert memory_tool.main([flag]) == 0
        out = capsys.readouterr().out
        assert out.startswith("Memory per device of a training config")
        assert all(f"  --{name}:" in out for name in ("config", "devices", "[no]json"))


def test_the_plan_reads_the_image_channels_from_the_data_config(tmp_path):
    """Grayscale digits, RGB folders: the planned parameters are those the run initialises
    (the patch embedding's kernel has one input plane per channel) and the compiled step
    takes images with those channels; no data is read or prepared."""
    counts = {}
    for source, channels in (("tfds", 1), ("folder", 3)):
        config = tiny_config(**{"data.source": source, "data.train_dir": str(tmp_path)})
        config.data.data_dir = str(tmp_path / "tfds")  # nothing prepared there
        plan = cost.plan_memory(config, devices=1)
        assert plan["channels"] == channels
        settings = validate(config)
        tx, _ = optim.make_optimizer(settings.optimizer, settings.train.total_steps)
        params = cost.abstract_train_state(settings.model, tx, channels)["params"]
        assert plan["num_params"] == sum(x.size for x in jax.tree.leaves(params))
        assert plan["peak_bytes_per_device"] > 0
        counts[channels] = plan["num_params"]
    patch, width = 2 * 2, 32  # Ti/2 at SMALL width: a [2, 2, C, 32] patch kernel
    assert counts[3] - counts[1] == 2 * patch * width
    assert not list(tmp_path.rglob("*array_record*"))  # the digits were not built
    assert "images     1 channel\n" in cost.format_plan(cost.plan_memory(tiny_config(), 1, False))
