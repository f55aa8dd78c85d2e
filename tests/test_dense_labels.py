"""Per-pixel labels: the digit canvases, label maps in the loaders, per-patch targets and
training an unpooled model on them."""

import collections
import os

import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import SMALL, losses_by_step, random_params, read_metrics, tiny_config
from vit_jax import data, models
from vit_jax.data import canvas, digits, pipeline
from vit_jax.train import parallel
from vit_jax.train.config import base_config, model_config, validate, with_dataset
from vit_jax.train.loop import evaluate, train_and_evaluate
from vit_jax.train.step import mean_iou, patch_targets, targets_and_classes

NAMES = (canvas.NAME_POSITION, canvas.NAME_SEGMENTATION)


@pytest.fixture(scope="session")
def canvas_dir(tmp_path_factory) -> str:
    """A tfds data dir with both canvas datasets built, once per test session."""
    path = str(tmp_path_factory.mktemp("canvas"))
    for builder in canvas.BUILDERS.values():
        digits.prepare(builder, path)
    return path


def open_canvas(data_dir, name, **kw) -> data.Dataset:
    return data.open_dataset(data.data_options({"data_dir": data_dir, "name": name, **kw}))


def records(dataset: data.Dataset, split: str = "eval") -> list[dict]:
    source = dataset.split(split)
    return [source[i] for i in range(len(source))]


def expected_records(name: str, split: str) -> collections.Counter:
    """What every canvas of the split should hold, from the layouts, drawn here: a multiset of
    (image bytes [PNG-quantised 0..255], label, segmentation bytes or None)."""
    from sklearn.datasets import load_digits

    sk = load_digits()
    pixels = np.round(sk.images * (255 / 16)).astype(np.uint8)
    out = collections.Counter()
    for layout in canvas.layouts(name, split):
        image = np.zeros((16, 16), np.uint8)
        classes = np.full((16, 16), 10, np.uint8)
        for p in layout:
            image[p.top : p.top + 8, p.left : p.left + 8] = pixels[p.digit]
            classes[p.top : p.top + 8, p.left : p.left + 8] = sk.target[p.digit]
        first = layout[0]
        label = int(sk.target[first.digit])
        if name == canvas.NAME_POSITION:
            label += 10 * (first.left >= 5)
            out[image.tobytes(), label, None] += 1
        else:
            out[image.tobytes(), label, classes.tobytes()] += 1
    return out


def stored_records(dataset: data.Dataset, split: str) -> collections.Counter:
    out = collections.Counter()
    for r in records(dataset, split):
        seg = r.get("segmentation")
        seg = None if seg is None else seg[..., 0].tobytes()
        out[r["image"][..., 0].tobytes(), int(r["label"]), seg] += 1
    return out


# ---------------------------------------------------------------------------------------------
# The datasets.


def test_canvases_are_deterministic_and_hold_their_splits_digits(canvas_dir, tmp_path):
    indices = digits.digits_split_indices()
    for name in NAMES:
        digits.prepare(canvas.BUILDERS[name], str(tmp_path))  # a second build
        again = open_canvas(str(tmp_path), name)
        dataset = open_canvas(canvas_dir, name)
        assert (dataset.info.num_train, dataset.info.num_eval) == (1500, 297)
        assert dataset.info.dense_labels == (name == canvas.NAME_SEGMENTATION)
        for split, tfds_split in (("train", "train"), ("eval", "test")):
            assert stored_records(dataset, split) == stored_records(again, split)
            assert stored_records(dataset, split) == expected_records(name, tfds_split)
            layouts = canvas.layouts(name, tfds_split)
            # One canvas per digit of the split, holding it first; extra digits from it too.
            assert [layout[0].digit for layout in layouts] == list(indices[tfds_split])
            used = {p.digit for layout in layouts for p in layout}
            assert used <= set(indices[tfds_split].tolist())
    names = open_canvas(canvas_dir, canvas.NAME_POSITION).info.class_names
    assert names[3] == "3 left" and names[13] == "3 right" and len(names) == 20
    names = open_canvas(canvas_dir, canvas.NAME_SEGMENTATION).info.class_names
    assert names == tuple("0123456789") + ("background",)


def test_position_label_says_the_side_of_the_digit(canvas_dir):
    for layout in canvas.layouts(canvas.NAME_POSITION, "test"):
        assert layout[0].left != 4 and 0 <= layout[0].top <= 8
    for r in records(open_canvas(canvas_dir, canvas.NAME_POSITION)):
        image, right = r["image"][..., 0], r["label"] >= 10
        # A box at left 5..8 leaves columns 0..4 blank; one at 0..3 leaves 12..15 blank.
        assert not (image[:, :5] if right else image[:, 12:]).any()


def test_segmentation_boxes_do_not_overlap_and_classes_cover_them(canvas_dir):
    for layout in canvas.layouts(canvas.NAME_SEGMENTATION, "train"):
        boxes = np.zeros((2, 16, 16), bool)
        for box, p in zip(boxes, layout, strict=True):
            box[p.top : p.top + 8, p.left : p.left + 8] = True
        assert not (boxes[0] & boxes[1]).any()
    for r in records(open_canvas(canvas_dir, canvas.NAME_SEGMENTATION)):
        classes = r["segmentation"][..., 0]
        assert (classes != 10).sum() == 128  # two whole 8x8 boxes
        assert not r["image"][..., 0][classes == 10].any()  # ink only inside the boxes


# ---------------------------------------------------------------------------------------------
# Loaders.


def nearest_indices(source: int, target: int) -> np.ndarray:
    """Source pixel under the centre of each of `target` output pixels."""
    return np.floor((np.arange(target) + 0.5) * source / target).astype(int)


def test_label_map_is_cropped_resized_and_flipped_with_the_image(canvas_dir):
    dataset = open_canvas(canvas_dir, canvas.NAME_SEGMENTATION, augment="resize", flip=False)
    example = dataset.train[0]
    classes = example["segmentation"][..., 0]
    resize = pipeline.TrainPreprocess((12, 6), "resize", 1.0, flip=False)
    out = resize.random_map(example, np.random.default_rng(0))
    assert out["label"].shape == (12, 6) and out["label"].dtype == np.int32
    rows, cols = nearest_indices(16, 12), nearest_indices(16, 6)
    np.testing.assert_array_equal(out["label"], classes[rows][:, cols])
    # A crop box: the same box of the map; a flip mirrors image and map alike; 2-D maps too.
    box = (2, 3, 8, 10)
    flat = {**example, "segmentation": classes}
    plain = pipeline.transform_example(flat, box, (8, 10), flip=False)
    flipped = pipeline.transform_example(example, box, (8, 10), flip=True)
    np.testing.assert_array_equal(plain["label"], classes[2:10, 3:13])
    np.testing.assert_array_equal(flipped["label"], plain["label"][:, ::-1])
    np.testing.assert_array_equal(flipped["image"], plain["image"][:, ::-1])
    with pytest.raises(ValueError, match="one class per pixel of the image"):
        pipeline.transform_example({**example, "segmentation": classes[:8]}, box, (8, 10), False)


def test_loaders_give_label_maps_paired_with_their_images(canvas_dir):
    dataset = open_canvas(canvas_dir, canvas.NAME_SEGMENTATION, augment="resize", flip=True)
    it = iter(data.train_loader(dataset, image_size=(16, 16), global_batch_size=32, seed=0))
    batch = next(it)
    it.close()
    assert batch["label"].shape == (32, 16, 16) and batch["label"].dtype == np.int32
    # Flipped or not, every image's ink lies inside its own map's digit boxes.
    assert not (batch["image"][..., 0] > -1)[batch["label"] == 10].any()
    batches = list(data.eval_batches(dataset, image_size=(16, 16), global_batch_size=64))
    labels = np.concatenate([b["label"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    maps = np.stack([r["segmentation"][..., 0] for r in records(dataset)])
    np.testing.assert_array_equal(labels[mask == 1], maps)  # one process: the split's order
    assert labels.shape == (320, 16, 16) and not labels[mask == 0].any()


# ---------------------------------------------------------------------------------------------
# Per-patch targets and metrics.


def unpooled(image_size=8, num_classes=11, **kw):
    return models.create(
        "Ti/4", num_classes=num_classes, image_size=image_size, classifier="unpooled", **SMALL, **kw
    )


def test_patch_targets_shares_majority_and_smoothing():
    label_map = np.full((1, 4, 8), 10)
    label_map[0, :, :2] = 3  # patch 0: half class 3, half background
    label_map[0, :3, 4:] = 7  # patch 1: 12 pixels of class 7, 4 of background
    shares = patch_targets(jnp.asarray(label_map), (4, 4), 11)
    assert shares.shape == (1, 2, 11)
    expected = np.zeros((2, 11))
    expected[0, [3, 10]] = 0.5
    expected[1, [7, 10]] = 0.75, 0.25
    np.testing.assert_allclose(shares[0], expected)
    targets, classes = targets_and_classes(jnp.asarray(label_map), unpooled((4, 8)), 0.1)
    np.testing.assert_array_equal(classes, [[3, 7]])  # a tie goes to the lower class
    np.testing.assert_allclose(targets[0], expected * 0.9 + 0.1 / 11, rtol=1e-6)
    # Patches in row-major order: the model's token order.
    quadrants = np.kron(np.array([[0, 1], [2, 3]]), np.ones((4, 4), int))[None]
    _, classes = targets_and_classes(jnp.asarray(quadrants), unpooled(8), 0.0)
    np.testing.assert_array_equal(classes, [[0, 1, 2, 3]])


def test_mean_iou_over_the_classes_present():
    confusion = np.array([[2, 1, 0], [0, 3, 0], [0, 0, 0]])  # class 2 never seen
    assert mean_iou(confusion) == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert mean_iou(np.eye(4) * 5) == 1.0 and mean_iou(np.zeros((3, 3))) == 0.0


# ---------------------------------------------------------------------------------------------
# Training and evaluation.


def dense_config(data_dir, **overrides):
    config = tiny_config(data_dir, **overrides)
    config.model = model_config("Ti/4", 16, num_classes=11, classifier="unpooled", **SMALL)
    config.data.name = canvas.NAME_SEGMENTATION
    config.data.augment = "resize"
    config.data.flip = True
    return config


def test_per_patch_eval_agrees_across_strategies_and_batch_sizes(canvas_dir):
    config = dense_config(canvas_dir)
    dataset = data.open_dataset(validate(config).data)
    model = models.build(config.model)
    params = random_params(model, channels=1)
    jit = evaluate(model, params, dataset, batch_size=64)  # 297 = 4 x 64 + 41 (padded)
    pmap = evaluate(model, params, dataset, batch_size=304, par=parallel.make("pmap"))
    with pytest.raises(ValueError, match="batch_size=100 is not divisible by 8 devices"):
        evaluate(model, params, dataset, batch_size=100)  # before any compilation
    assert jit.keys() == pmap.keys() == {"accuracy", "loss", "num_examples", "miou"}
    assert jit["num_examples"] == pmap["num_examples"] == 297
    for key in ("accuracy", "loss", "miou"):
        assert jit[key] == pytest.approx(pmap[key], rel=1e-5)
    assert 0 <= jit["miou"] <= 1 and 0 <= jit["accuracy"] <= 1


def test_an_unpooled_model_learns_segmentation(canvas_dir, tmp_path):
    """A run of the default strategy (jit), with gradient accumulation, on per-pixel labels."""
    workdir = tmp_path / "run"
    config = dense_config(
        canvas_dir,
        total_steps=60,
        grad_accum_steps=2,
        log_every_steps=10,
        checkpoint_every_steps=60,
        eval_batch_size=304,
    )
    config.optimizer.learning_rate = 3e-3
    config.optimizer.warmup_steps = 5
    summary = train_and_evaluate(config, str(workdir))
    # The all-background baseline: the share of the eval patches whose majority is background.
    dataset = open_canvas(canvas_dir, canvas.NAME_SEGMENTATION)
    maps = np.stack([r["segmentation"][..., 0] for r in records(dataset)])
    _, majority = targets_and_classes(jnp.asarray(maps), models.build(config.model), 0.0)
    baseline = float(np.mean(np.asarray(majority) == 10))
    assert summary["accuracy"] > baseline + 0.03
    assert 0 <= summary["miou"] <= 1 and np.isfinite(summary["loss"])
    assert summary["num_examples"] == 297
    train = [r for r in read_metrics(workdir) if "split" not in r]
    assert train[-1]["loss"] < train[0]["loss"] - 0.3
    evals = [r for r in read_metrics(workdir) if "split" in r]
    assert evals[-1]["miou"] == pytest.approx(summary["miou"])


def test_per_pixel_labels_train_alike_under_pmap_and_jit(canvas_dir, tmp_path):
    """pmap splits the label maps [B, H, W] with their images: the losses of a jit run."""
    losses = {}
    for strategy in ("jit", "pmap"):
        config = dense_config(canvas_dir, total_steps=4, log_every_steps=1, parallel=strategy)
        config.checkpoint_every_steps = 4
        train_and_evaluate(config, str(tmp_path / strategy))
        losses[strategy] = losses_by_step(tmp_path / strategy)
    assert list(losses["pmap"]) == list(losses["jit"]) == [1, 2, 3, 4]
    np.testing.assert_allclose(*(list(losses[s].values()) for s in ("pmap", "jit")), rtol=1e-4)


def test_labels_and_classifier_must_match(canvas_dir, tmp_path):
    dense = data.DatasetInfo(11, 1500, 297, 1, dense_labels=True)
    config = base_config()
    with pytest.raises(ValueError, match="has a label per pixel.*classifier=unpooled"):
        with_dataset(validate(config), dense)
    config.model.classifier = "unpooled"
    assert with_dataset(validate(config), dense).model.classifier == "unpooled"
    with pytest.raises(ValueError, match="classifier='unpooled' gives per-token logits"):
        with_dataset(validate(config), data.DatasetInfo(10, 1500, 297, 1))
    # Through a run: refused once the dataset is open, before any checkpoint or compile.
    config = dense_config(canvas_dir)
    config.model.classifier = "gap"
    with pytest.raises(ValueError, match="'digits_segmentation' has a label per pixel"):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_a_flip_is_refused_where_it_changes_the_label(canvas_dir):
    position = open_canvas(canvas_dir, "digits_position").info
    assert position.flip_changes_label
    assert not open_canvas(canvas_dir, "digits_segmentation").info.flip_changes_label
    config = base_config()
    config.data.name = "digits_position"
    config.data.flip = True
    with pytest.raises(ValueError, match="'digits_position' has labels that a horizontal flip"):
        with_dataset(validate(config), position)
    config.data.flip = False
    assert with_dataset(validate(config), position).model.num_classes == 20
