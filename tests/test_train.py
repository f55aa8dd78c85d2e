"""Training: parallel strategies agree, optimizer contract, eval over whole splits, bad input."""

import dataclasses
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.conftest import SMALL, read_metrics, tiny_config
from vit_jax import data, models
from vit_jax.checkpoint import layout
from vit_jax.data.folder import scan_folder
from vit_jax.train import optim, parallel
from vit_jax.train.config import validate
from vit_jax.train.loop import evaluate, train_and_evaluate
from vit_jax.train.sharding import MeshOptions, ShardingOptions
from vit_jax.train.state import create_state, init_params
from vit_jax.train.step import make_train_step, mixup, patch_targets, soft_targets


def model_and_batches(digits_dir, steps: int = 10):
    """The tiny config, its model and the first `steps` global batches of its stream."""
    config = tiny_config(digits_dir)
    dataset = data.open_dataset(validate(config).data)
    it = iter(data.train_loader(dataset, image_size=(8, 8), global_batch_size=32, seed=0))
    batches = [next(it) for _ in range(steps)]
    it.close()
    return config, models.build(config.model), batches


def run_steps(par, model, config, batches, num_steps=10, grad_accum_steps=1):
    """Losses of `num_steps` steps of the pure train step under a parallel strategy."""
    tx, schedule = optim.make_optimizer(validate(config).optimizer, 100)
    rng = jax.random.PRNGKey(0)
    params = init_params(model, rng, 1)
    state = create_state(params, tx, rng)
    shardings = par.state_shardings(state)
    state = par.put_state(state)
    step = par.compile_train(
        make_train_step(
            model,
            tx,
            schedule,
            label_smoothing=0.1,
            grad_accum_steps=grad_accum_steps,
            axis_name=par.axis_name,
        ),
        shardings,
    )
    losses = []
    for i in range(num_steps):
        state, metrics = step(state, par.put_batch(batches[i]))
        losses.append(float(par.metric(metrics["loss"])))
    return np.array(losses), par.host_state(state)


def test_mesh_pmap_and_single_device_give_the_same_losses(digits_dir):
    assert jax.device_count() == 8, "conftest sets JAX_NUM_CPU_DEVICES=8"
    config, model, batches = model_and_batches(digits_dir)
    mesh, mesh_state = run_steps(parallel.make("jit"), model, config, batches)
    pmap, pmap_state = run_steps(parallel.make("pmap"), model, config, batches)
    single, _ = run_steps(parallel.make("jit", jax.devices()[:1]), model, config, batches)
    accum, _ = run_steps(parallel.make("jit"), model, config, batches, grad_accum_steps=2)
    assert losses_decrease(mesh)
    for other in (pmap, single, accum):
        np.testing.assert_allclose(other, mesh, rtol=1e-4)
    # Adam normalises tiny gradients, so near-zero biases may differ by ~lr x float noise.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4),
        mesh_state["params"],
        pmap_state["params"],
    )


def bytes_on(device, tree) -> int:
    """Bytes of the shards of `tree`'s arrays that live on `device`."""
    return sum(
        shard.data.nbytes
        for leaf in jax.tree.leaves(tree)
        for shard in leaf.addressable_shards
        if shard.device == device
    )


def test_fsdp_gives_the_losses_of_data_parallelism_with_an_eighth_of_the_state_per_device(
    digits_dir,
):
    config, model, batches = model_and_batches(digits_dir)
    dp, dp_state = run_steps(parallel.make("jit"), model, config, batches)
    fsdp_par = parallel.make(
        "jit", mesh=MeshOptions(data=1, fsdp=8), options=ShardingOptions(fsdp_min_size_mb=0)
    )
    fsdp, fsdp_state = run_steps(fsdp_par, model, config, batches)
    np.testing.assert_allclose(fsdp, dp, rtol=1e-4)
    for part in ("params", "opt_state"):
        total = sum(x.nbytes for x in jax.tree.leaves(fsdp_state[part]))
        per_device = [bytes_on(d, fsdp_state[part]) for d in jax.devices()]
        # Every tensor splits over 8 but the 10-class head bias (and Adam's step count).
        assert max(per_device) <= total / 8 * 1.02, (part, per_device, total)
        assert bytes_on(jax.devices()[0], dp_state[part]) == total  # data parallel: replicated


def losses_decrease(losses):
    return losses[-3:].mean() < losses[:3].mean()


def test_weight_decay_applies_to_kernels_only():
    model = models.create(
        "Ti/4", num_classes=3, image_size=8, posemb="learned+relative", classifier="map", **SMALL
    )
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    mask = optim.decay_mask(params)
    flat = {
        "/".join(p.key for p in path): v for path, v in jax.tree_util.tree_leaves_with_path(mask)
    }
    assert flat["embedding/kernel"] and flat["head/kernel"]
    assert flat["Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"]
    for name in [
        "embedding/bias",
        "Transformer/posembed_input/pos_embedding",
        "Transformer/encoderblock_0/LayerNorm_0/scale",
        "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/relative_position_bias_table",
        "MAPHead_0/probe",
        "head/bias",
    ]:
        assert not flat[name], name


def test_schedule_warms_up_then_decays():
    cfg = optim.OptimizerOptions(warmup_steps=10, learning_rate=1.0)
    cosine = optim.learning_rate_schedule(cfg, 110)
    assert float(cosine(0)) == 0.0 and float(cosine(5)) == pytest.approx(0.5)
    assert float(cosine(10)) == pytest.approx(1.0) and float(cosine(60)) == pytest.approx(0.5)
    assert float(cosine(110)) == pytest.approx(0.0, abs=1e-6)
    cfg = dataclasses.replace(cfg, schedule="linear")
    assert float(optim.learning_rate_schedule(cfg, 110)(35)) == pytest.approx(0.75)
    # A run no longer than its warmup never decays: said once, with a warmup that fits.
    assert optim.warmup_note(cfg, 110) is None
    short = optim.learning_rate_schedule(cfg, 8)
    assert float(short(7)) == pytest.approx(1.0)  # warmed up at the last step, no decay
    assert optim.warmup_note(cfg, 8) == (
        "note: optimizer.warmup_steps=10 is not below total_steps=8: the learning rate rises "
        "for 7 steps and the run ends before it decays; e.g. "
        "--config.optimizer.warmup_steps=0: no warmup."
    )
    constant = optim.warmup_note(dataclasses.replace(cfg, schedule="constant"), 10)
    assert "rises for 9 steps and the run ends before it reaches learning_rate" in constant
    assert constant.endswith("--config.optimizer.warmup_steps=1 warms up for a tenth of the run.")


def test_sgd_clips_then_applies_momentum():
    cfg = optim.OptimizerOptions(
        name="sgd", grad_clip_norm=0.5, warmup_steps=0, schedule="constant", learning_rate=0.1
    )
    cfg = dataclasses.replace(cfg, momentum=0.9, weight_decay=0.0)
    tx, _ = optim.make_optimizer(cfg, 10)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
    grads = jax.tree.map(lambda x: 10 * x, params)  # global norm 10 * sqrt(6), clipped to 0.5
    opt_state = tx.init(params)
    first, opt_state = tx.update(grads, opt_state, params)
    assert float(optax.tree.norm(first)) == pytest.approx(0.1 * 0.5, rel=1e-5)
    second, _ = tx.update(grads, opt_state, params)
    assert float(optax.tree.norm(second)) == pytest.approx(0.1 * 0.5 * 1.9, rel=1e-5)


def test_label_smoothing_and_mixup_targets():
    targets = soft_targets(jnp.array([0, 2]), 4, 0.1)
    np.testing.assert_allclose(targets[0], [0.925, 0.025, 0.025, 0.025])
    images = jnp.arange(4.0).reshape(4, 1, 1, 1)
    mixed_images, mixed = mixup(images, soft_targets(jnp.arange(4), 4, 0.0), jax.random.key(0), 0.4)
    np.testing.assert_allclose(mixed.sum(-1), 1.0, rtol=1e-6)
    lam = float(mixed[1, 1])
    assert 0.5 <= lam <= 1.0 and float(mixed[1, 0]) == pytest.approx(1 - lam, abs=1e-6)
    assert float(mixed_images[1, 0, 0, 0]) == pytest.approx(lam * 1 + (1 - lam) * 0, abs=1e-6)


def test_mixup_mixes_per_patch_targets_with_the_same_partner_and_weight_as_the_pixels():
    """Per-pixel labels: each patch's mixed class shares must describe its mixed pixels. With
    pixel value = class, a patch's mean mixed pixel is sum_k k * share_k; a partner or a weight
    that differed between the image and its targets breaks this."""
    rng = np.random.default_rng(0)
    label_map = rng.integers(0, 5, (6, 8, 12))  # 6 examples, 2x3 patches of 4x4 pixels
    images = jnp.asarray(label_map, jnp.float32)[..., None]
    targets = patch_targets(jnp.asarray(label_map), (4, 4), 5)  # [6, 6, 5]
    mixed_images, mixed = mixup(images, targets, jax.random.key(3), 0.4)
    assert mixed.shape == (6, 6, 5) and not np.allclose(mixed, targets)
    patch_means = mixed_images[..., 0].reshape(6, 2, 4, 3, 4).mean((2, 4)).reshape(6, 6)
    np.testing.assert_allclose(patch_means, (mixed * jnp.arange(5)).sum(-1), atol=1e-5)
    np.testing.assert_allclose(mixed.sum(-1), 1.0, rtol=1e-6)


def test_eval_counts_every_example_of_a_split_not_divisible_by_the_batch(digits_dir):
    config = tiny_config(digits_dir)
    model = models.build(config.model)
    params = init_params(model, jax.random.PRNGKey(1), 1)
    dataset = data.open_dataset(validate(config).data)
    results = []
    for batch_size in (64, 304):  # 297 = 4 x 64 + 41; 304 holds the whole split in one batch
        results.append(evaluate(model, params, dataset, batch_size=batch_size))
    pmap = evaluate(model, params, dataset, batch_size=64, par=parallel.make("pmap"))
    assert pmap["num_examples"] == 297
    assert pmap["accuracy"] == pytest.approx(results[0]["accuracy"], abs=1e-9)
    assert results[0]["num_examples"] == results[1]["num_examples"] == 297
    assert results[0]["accuracy"] == pytest.approx(results[1]["accuracy"], abs=1e-9)
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-5)
    # Parameters of another model are refused, not silently half-used.
    for other, message in (
        (
            model.clone(posemb="sincos2d"),
            "'Transformer/posembed_input/pos_embedding' (1, 5, 32) is not a parameter",
        ),
        (model.clone(num_classes=3), "'head/bias' is (10,), the model's is (3,)"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            evaluate(other, params, dataset, batch_size=64)
    with pytest.raises(ValueError, match=re.escape("'head/bias' (10,) is missing")):
        missing = {**params, "head": {"kernel": params["head"]["kernel"]}}
        evaluate(model, missing, dataset, batch_size=64)


def test_a_workdir_holds_one_run_at_a_time(digits_dir, tmp_path):
    """While a run holds its workdir (another process: a job submitted twice), a second run
    stops before it writes anything; a finished run lets go."""
    import fcntl

    workdir = tmp_path / "run"
    saving = workdir / "checkpoints" / "8.orbax-checkpoint-tmp-1700000000000000" / "state"
    saving.mkdir(parents=True)  # the first run's save in progress (Orbax tidies such on opening)
    (saving / "x").write_text("")
    other = os.open(workdir, os.O_RDONLY)  # another open file: as another process's lock
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(ValueError, match="another run is training in .*another --workdir"):
            train_and_evaluate(tiny_config(digits_dir, total_steps=2), str(workdir))
        assert not (workdir / "config.json").exists() and not (workdir / "metrics.jsonl").exists()
        assert (saving / "x").exists()  # untouched
    finally:
        os.close(other)
    shutil.rmtree(workdir / "checkpoints")
    assert train_and_evaluate(tiny_config(digits_dir, total_steps=2), str(workdir))["step"] == 2
    mine = os.open(workdir, os.O_RDONLY)
    fcntl.flock(mine, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released: no BlockingIOError
    os.close(mine)


def test_training_writes_metrics_tensorboard_config_and_checkpoints(digits_dir, tmp_path):
    workdir = tmp_path / "run"
    config = tiny_config(digits_dir, profile_start_step=3, profile_num_steps=2)
    summary = train_and_evaluate(config, str(workdir))
    records = read_metrics(workdir)
    train = [r for r in records if "split" not in r]
    evals = [r for r in records if "split" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert set(train[0]) >= {"step", "loss", "accuracy", "learning_rate"}
    # Speed: MFU and the share of time spent waiting for data in every record; the first
    # step's compilation time once, apart from img/s.
    # (logged every step, the first record holds the compiling step alone: no img/s there)
    assert all(0 < r["mfu"] < 10 and 0 <= r["data_wait"] <= 1 for r in train[1:])
    assert [r.get("compile_seconds", 0) > 0 for r in train] == [True] + [False] * 5
    assert "img_per_sec" not in train[0] and all(r["img_per_sec"] > 0 for r in train[1:])
    traces = [f for _, _, fs in os.walk(workdir / "profile") for f in fs if "trace" in f]
    assert traces, "profile_start_step wrote no trace"
    assert evals[-1]["num_examples"] == 297 and evals[-1]["split"] == "eval"
    assert summary["num_examples"] == 297 and summary["step"] == 6
    assert json.load(open(workdir / "config.json"))["model"]["hidden_size"] == 32
    # The dataset's class names go with every checkpoint (what vit_jax.predict shows).
    stored = layout.read_config(str(workdir / "checkpoints" / "6"))
    assert stored[layout.CLASS_NAMES] == [str(i) for i in range(10)]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
    # A rerun finds the final checkpoint and does no more training.
    again = train_and_evaluate(tiny_config(digits_dir), str(workdir))
    assert again["step"] == 6 and again["accuracy"] == summary["accuracy"]


def write_folder(root, classes=("cat", "dog", "fox"), per_class=6, size=(12, 10)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        os.makedirs(root / name, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            pixels[..., c] = 255  # class signal in one channel
            Image.fromarray(pixels).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")


def test_image_folder_source_trains_and_evaluates(tmp_path, monkeypatch, capsys):
    write_folder(tmp_path / "train")
    write_folder(tmp_path / "val", per_class=3)
    config = tiny_config(tmp_path)
    config.data.source = "folder"
    config.data.name = "my_images"
    config.data.train_dir = str(tmp_path / "train")
    config.data.eval_dir = str(tmp_path / "val")
    config.model.num_classes = None  # from the folder: 3 classes
    config.batch_size, config.eval_batch_size, config.total_steps = 8, 8, 4
    config.eval_every_steps = 2  # two evaluation passes: at step 2 and at the end
    scans = []

    def counted_scan(*args, **kwargs):
        scans.append(args)
        return scan_folder(*args, **kwargs)

    monkeypatch.setattr(data.pipeline, "scan_folder", counted_scan)
    summary = train_and_evaluate(config, str(tmp_path / "run"))
    assert f"on the image folder {tmp_path / 'train'}: 18 train / 9 eval" in capsys.readouterr().out
    assert summary["num_examples"] == 9
    assert [r["step"] for r in read_metrics(tmp_path / "run") if "split" in r] == [2, 4]
    assert len(scans) == 2  # each folder (train, eval) walked once in the whole run
    cfg = json.load(open(tmp_path / "run" / "config.json"))
    assert cfg["model"]["num_classes"] == 3
    assert cfg[layout.CLASS_NAMES] == ["cat", "dog", "fox"]  # the subfolders, label order


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda c: setattr(c, "batch_size", 30), "batch_size=30 is not divisible by 8 devices"),
        (
            lambda c: setattr(c, "eval_batch_size", 30),
            "eval_batch_size=30 is not divisible by 8 devices: use a multiple of 8.",
        ),
        (lambda c: setattr(c.optimizer, "name", "lamb"), "optimizer.name='lamb' is unknown"),
        (lambda c: setattr(c.data, "name", "not_a_dataset"), "not_a_dataset"),
        (lambda c: setattr(c, "parallel", "fsdp"), "parallel='fsdp' is unknown"),
        (lambda c: setattr(c.model, "posemb", "rotary"), "posemb='rotary'"),
        (
            lambda c: setattr(c.model, "num_classes", 7),
            "model.num_classes=7 but the dataset has 10",
        ),
        (lambda c: setattr(c.model, "classifier", "unpooled"), "classifier='unpooled' gives"),
        (
            lambda c: setattr(c, "grad_accum_steps", 0),
            "grad_accum_steps=0 is out of range: it must be >= 1",
        ),
        (lambda c: setattr(c.init_options, "method", "bicubic"), "init_options.method='bicubic'"),
        (lambda c: setattr(c.model, "image_size", None), "model.image_size must be set"),
        (lambda c: setattr(c.model, "patch_size", (3, 3)), "is not divisible by patch_size"),
    ],
)
def test_bad_configs_fail_before_training(digits_dir, tmp_path, change, message):
    config = tiny_config(digits_dir)
    change(config)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("'", "'")):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_a_workdir_of_another_model_is_not_resumed(digits_dir, tmp_path):
    train_and_evaluate(tiny_config(digits_dir, total_steps=3), str(tmp_path / "run"))
    other = tiny_config(digits_dir, total_steps=3)
    other.model.posemb = "rope_axial"
    with pytest.raises(ValueError, match="model.posemb: 'learned' -> 'rope_axial'.*init_from"):
        train_and_evaluate(other, str(tmp_path / "run"))


def test_a_folder_whose_held_out_split_is_empty_is_refused_before_training(tmp_path):
    write_folder(tmp_path / "train", per_class=3)
    config = tiny_config(tmp_path)
    config.data.source, config.data.train_dir = "folder", str(tmp_path / "train")
    config.model.num_classes = 3
    config.data.eval_fraction = 0.1  # of 3 images per class: none held out
    with pytest.raises(
        ValueError,
        match=r"evaluation split of the image folder .* is empty.*"
        r"data.eval_fraction=0.1 .* holds out none; set data.eval_dir",
    ):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_missing_folder_and_unwritable_workdir_are_reported(digits_dir, tmp_path):
    config = tiny_config(digits_dir)
    config.data.source, config.data.train_dir = "folder", str(tmp_path / "nope")
    with pytest.raises(ValueError, match="nope"):
        train_and_evaluate(config, str(tmp_path / "run"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cannot be written: .*file is a file, not a directory"):
        train_and_evaluate(tiny_config(digits_dir), str(tmp_path / "file" / "run"))
    with pytest.raises(ValueError, match="is a URL"):
        train_and_evaluate(tiny_config(digits_dir), "gs://bucket/run")


def test_init_from_loads_a_run_into_a_new_run_at_the_same_or_a_new_resolution(
    digits_dir, tmp_path, capsys
):
    base = train_and_evaluate(tiny_config(digits_dir), str(tmp_path / "base"))
    # Same model, a learning rate too small to move the weights: the eval must be the base's.
    same = tiny_config(digits_dir, init_from=str(tmp_path / "base"), total_steps=1)
    same.optimizer.name, same.optimizer.learning_rate = "sgd", 1e-12
    again = train_and_evaluate(same, str(tmp_path / "same"))
    assert again["accuracy"] == base["accuracy"]
    assert again["loss"] == pytest.approx(base["loss"], rel=1e-5)
    # Twice the resolution: the 2x2 position-embedding grid becomes 4x4, reported as resized.
    bigger = tiny_config(digits_dir, init_from=str(tmp_path / "base"), total_steps=2)
    bigger.model.image_size = (16, 16)
    capsys.readouterr()
    result = train_and_evaluate(bigger, str(tmp_path / "bigger"))
    out = capsys.readouterr().out
    assert "resized" in out and "(1, 5, 32) → (1, 17, 32)" in out
    assert result["num_examples"] == 297
    # Resuming that fine-tune needs nothing from init_from (gone now), nor init_from at all.
    (tmp_path / "base").rename(tmp_path / "moved")
    longer = tiny_config(digits_dir, init_from=str(tmp_path / "base"), total_steps=3)
    longer.model.image_size = (16, 16)
    assert train_and_evaluate(longer, str(tmp_path / "bigger"))["num_examples"] == 297
    assert "at step 2 (init_from is not read again)" in capsys.readouterr().out
    with longer.unlocked():
        longer.init_from, longer.total_steps = None, 4
    assert train_and_evaluate(longer, str(tmp_path / "bigger"))["num_examples"] == 297
    stored = json.loads((tmp_path / "bigger" / "config.json").read_text())
    assert stored["model"]["posemb_grid"] == [2, 2]  # the grid the embedding was trained on
    # A start that fails before training (no such init_from) leaves no workdir behind.
    failing = tiny_config(digits_dir, init_from=str(tmp_path / "base"))
    with pytest.raises(FileNotFoundError):
        train_and_evaluate(failing, str(tmp_path / "failed"))
    assert not (tmp_path / "failed").exists()
    with pytest.raises(FileNotFoundError):  # nor the parent folders it made for it
        train_and_evaluate(failing, str(tmp_path / "new" / "parent" / "failed"))
    assert not (tmp_path / "new").exists()
    (tmp_path / "shared" / "sibling").mkdir(parents=True)  # another run's: kept, with its parent
    with pytest.raises(FileNotFoundError):
        train_and_evaluate(failing, str(tmp_path / "shared" / "failed"))
    assert [p.name for p in (tmp_path / "shared").iterdir()] == ["sibling"]


def test_removing_an_empty_workdir_never_removes_a_file(tmp_path):
    from vit_jax.checkpoint import manager
    from vit_jax.train.loop import remove_if_empty

    (tmp_path / "w" / "checkpoints" / "7").mkdir(parents=True)  # a step without its state
    (tmp_path / "w" / "kept").mkdir()
    (tmp_path / "w" / "kept" / "config.json").write_text("{}")  # written meanwhile
    assert manager.newest_stored_config(str(tmp_path / "w")) is None  # no finished step
    remove_if_empty(str(tmp_path / "w"))  # a run's workdir with a file stays whole
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["checkpoints", "kept"]
    (tmp_path / "w" / "kept" / "config.json").unlink()
    remove_if_empty(str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_a_given_dataset_must_be_the_one_the_config_describes(digits_dir, tmp_path):
    """train_and_evaluate(config, workdir, dataset) takes an opened dataset only if it was
    opened with the config's data options: another one fails before the workdir is made."""
    config = tiny_config(digits_dir)
    other = validate(config).data
    other = dataclasses.replace(other, train_split="train[:100]")
    with pytest.raises(ValueError, match="other data options than config.data"):
        train_and_evaluate(config, str(tmp_path / "run"), data.open_dataset(other))
    assert not (tmp_path / "run").exists()
