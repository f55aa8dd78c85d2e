"""Scale: the (data, fsdp) mesh, the sharding rule, a data order and checkpoints that do not
depend on the topology, and compute settings that may change on resume."""

import json
import os
import shutil

import grain
import jax
import numpy as np
import pytest

from tests.conftest import losses_by_step
from tests.conftest import tiny_config as shared_tiny_config
from vit_jax import data
from vit_jax.checkpoint import manager as ckpt
from vit_jax.train import sharding
from vit_jax.train.config import validate
from vit_jax.train.loop import initial_state, resume_changes, set_up, train_and_evaluate


def tiny_config(data_dir, **overrides):
    """The shared tiny run with dropout and stochastic depth on (randomness in the step), every
    tensor sharded under fsdp (the test model's tensors are tiny)."""
    randomness = {"model.dropout_rate": 0.1, "model.stochastic_depth": 0.1}
    return shared_tiny_config(
        data_dir, **randomness, **{"sharding.fsdp_min_size_mb": 0.0}, **overrides
    )


LAYOUTS = {
    "dp": {"mesh.data": -1, "mesh.fsdp": 1},
    "fsdp": {"mesh.data": 1, "mesh.fsdp": 8},
    "dp2_fsdp4": {"mesh.data": 2, "mesh.fsdp": 4},
    "pmap": {"parallel": "pmap"},
}


def test_the_global_batch_of_a_step_is_the_same_on_any_number_of_processes(digits_dir):
    dataset = data.open_dataset(validate(tiny_config(digits_dir)).data)

    def batches(count, index, start_step=0, steps=3):
        shard = grain.sharding.ShardOptions(shard_index=index, shard_count=count)
        loader = data.train_loader(
            dataset,
            image_size=(8, 8),
            global_batch_size=32,
            seed=5,
            shard=shard,
            start_step=start_step,
        )
        it = iter(loader)
        out = [next(it) for _ in range(steps)]
        it.close()
        return out

    one = batches(1, 0)
    halves = [batches(2, i) for i in range(2)]
    for step in range(3):
        for key in ("image", "label"):
            joined = np.concatenate([halves[0][step][key], halves[1][step][key]])
            np.testing.assert_array_equal(joined, one[step][key])
    resumed = batches(2, 1, start_step=2, steps=1)[0]
    np.testing.assert_array_equal(resumed["image"], one[2]["image"][16:])

    # Worker processes split the stream by whole steps: the same batches, from any step.
    config = tiny_config(digits_dir, **{"data.num_workers": 2})
    with_workers = data.open_dataset(validate(config).data)
    loader = data.train_loader(
        with_workers, image_size=(8, 8), global_batch_size=32, seed=5, start_step=1
    )
    it = iter(loader)
    for step in (1, 2):
        np.testing.assert_array_equal(next(it)["image"], one[step]["image"])
    it.close()


def run_and_resume(digits_dir, tmp_path, first: str, second: str) -> tuple[dict, dict]:
    """Losses of an uninterrupted 6-step run under layout `first`, and of the same run resumed
    from its step-3 checkpoint under layout `second`."""
    workdir = tmp_path / "run"
    train_and_evaluate(tiny_config(digits_dir, **LAYOUTS[first]), str(workdir))
    uninterrupted = losses_by_step(workdir)
    shutil.rmtree(workdir / "checkpoints" / "6")  # as if stopped after the step-3 checkpoint
    summary = train_and_evaluate(tiny_config(digits_dir, **LAYOUTS[second]), str(workdir))
    assert summary["step"] == 6
    return uninterrupted, losses_by_step(workdir)


@pytest.mark.parametrize("first,second", [("fsdp", "dp"), ("dp", "dp2_fsdp4"), ("pmap", "pmap")])
def test_a_run_resumes_on_another_mesh_with_the_losses_of_an_uninterrupted_run(
    digits_dir, tmp_path, first, second
):
    uninterrupted, resumed = run_and_resume(digits_dir, tmp_path, first, second)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    steps = [4, 5, 6]
    np.testing.assert_allclose(
        [resumed[s] for s in steps], [uninterrupted[s] for s in steps], rtol=1e-4
    )


def test_compute_settings_may_change_on_resume_architecture_may_not(digits_dir, tmp_path, capsys):
    workdir = str(tmp_path / "run")
    train_and_evaluate(tiny_config(digits_dir, total_steps=3), workdir)
    capsys.readouterr()
    summary = train_and_evaluate(
        tiny_config(digits_dir, total_steps=4, **{"model.dtype": "bfloat16"}, **LAYOUTS["fsdp"]),
        workdir,
    )
    assert summary["step"] == 4
    # What changes the numbers from here on is said; the mesh (exact either way) is not.
    out = capsys.readouterr().out
    assert "resumed with other settings than checkpoint 3's: total_steps: 3 -> 4; " in out
    assert "model.dtype: 'float32' -> 'bfloat16'. From here on" in out and "mesh" not in out
    train_and_evaluate(tiny_config(digits_dir, total_steps=5, log_every_steps=2), workdir)
    assert "model.dtype: 'bfloat16' -> 'float32'" in capsys.readouterr().out
    with open(os.path.join(workdir, "config.json")) as f:
        stored = json.load(f)  # checkpoint 5's config
    manager = ckpt.open_manager(workdir, keep=2, save_every=100)
    operational = {**stored, "log_every_steps": 1, "mesh": {"data": 2, "fsdp": 4}}
    operational["data"] = {**stored["data"], "read_threads": 4}
    assert resume_changes(manager, operational) == []
    workers = {**stored, "data": {**stored["data"], "num_workers": 2}}  # another batch stream
    assert resume_changes(manager, workers) == ["data.num_workers: 0 -> 2"]
    other_lr = {**stored, "optimizer": {**stored["optimizer"], "learning_rate": 0.5}}
    assert resume_changes(manager, other_lr) == ["optimizer.learning_rate: 0.001 -> 0.5"]
    manager.close()
    with pytest.raises(ValueError, match="model.hidden_size: 32 -> 64"):
        train_and_evaluate(
            tiny_config(digits_dir, total_steps=5, **{"model.hidden_size": 64}), workdir
        )


def test_init_from_another_resolution_places_parameters_by_the_rule(digits_dir, tmp_path):
    source = tmp_path / "source"
    train_and_evaluate(tiny_config(digits_dir, total_steps=3), str(source))
    config = tiny_config(digits_dir, init_from=str(source), **LAYOUTS["fsdp"])
    config.model.image_size = (16, 16)  # grid 2x2 -> 4x4: the position embedding is resized
    run = set_up(config, str(tmp_path / "target"))
    try:
        state, train_iter, resumed = initial_state(run)
        train_iter.close()
    finally:
        run.manager.close()
    assert not resumed
    posemb = state["params"]["Transformer"]["posembed_input"]["pos_embedding"]
    assert posemb.shape == (1, 17, 32)
    assert posemb.sharding.spec == jax.sharding.PartitionSpec(None, None, "fsdp")
    head_bias = state["params"]["head"]["bias"]  # 10 classes: not divisible by 8
    assert head_bias.sharding.spec == jax.sharding.PartitionSpec()
    mu = state["opt_state"][1][0].mu["Transformer"]["posembed_input"]["pos_embedding"]
    assert mu.sharding == posemb.sharding  # optimizer state follows its parameter


def test_the_rule_splits_large_tensors_along_their_largest_divisible_dimension():
    spec, mib = sharding.leaf_spec, 2**20
    P = jax.sharding.PartitionSpec
    assert spec((768, 3072), 768 * 3072 * 4, 8, 4 * mib) == P(None, "fsdp")
    assert spec((3072, 10), 3072 * 40, 8, 4 * mib) == P()  # 120 KiB: below the threshold
    assert spec((3001, 10), 1, 8, 0) == P()  # no dimension divides by 8
    assert spec((4, 16), 1, 8, 0, "1") == P(None, "fsdp")  # an override names the dimension
    assert spec((4, 16), 10**9, 8, 0, "replicate") == P()
    with pytest.raises(ValueError, match=r"'5' for head/kernel \(96, 10\): it has no dimension 5"):
        spec((96, 10), 1, 8, 0, "5", "head/kernel")
    with pytest.raises(ValueError, match=r"splits its dimension 1 \(10\) over fsdp=8"):
        spec((96, 10), 1, 8, 0, "1", "head/kernel")


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"mesh.fsdp": 3}, "mesh.data=-1 x mesh.fsdp=3 does not make the 8 devices"),
        ({"mesh.data": 2, "mesh.fsdp": 2}, "choose sizes whose product is 8"),
        ({"parallel": "pmap", "mesh.fsdp": 8, "mesh.data": 1}, "parallel='pmap' replicates"),
        ({"batch_size": 36}, "batch_size=36 is not divisible by 8 devices"),
        ({"sharding.overrides": "head"}, "is not PATTERN=RULE"),
        ({"sharding.overrides": "head/.*=twice"}, "is not PATTERN=RULE"),
    ],
)
def test_a_mesh_or_sharding_that_cannot_work_is_refused_before_anything_runs(
    digits_dir, overrides, message
):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(tiny_config(digits_dir, **overrides))


def test_an_override_that_matches_no_parameter_is_refused(digits_dir, tmp_path):
    config = tiny_config(digits_dir, **{"sharding.overrides": "nothing_like_this=replicate"})
    with pytest.raises(ValueError, match="matches no parameter"):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")  # refused before anything
