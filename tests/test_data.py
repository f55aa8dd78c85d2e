"""Data pipeline: the embedded digits, image folders, grain loaders, sharding, checkpointing."""

import collections
import shutil

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from ml_collections import ConfigDict
from PIL import Image

from vit_jax import data
from vit_jax.data import digits, pipeline, transforms
from vit_jax.data import folder as folder_module

NUM_FOLDER_IMAGES = 30
FOLDER_CLASSES = ("ant", "bee", "cat")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """root/<class>/img_<i>.*: image i is a flat 6x4 image of gray value 8 * i (its identity)."""
    root = tmp_path_factory.mktemp("folder")
    for name in FOLDER_CLASSES:
        (root / name).mkdir()
    (root / "ant" / "notes.txt").write_text("not an image")
    for i in range(NUM_FOLDER_IMAGES):
        pixels = np.full((6, 4), 8 * i, np.uint8)
        path = root / FOLDER_CLASSES[i % 3] / f"img_{i:02d}"
        if i % 2:
            Image.fromarray(pixels).save(f"{path}.png")  # Grayscale PNG.
        else:
            Image.fromarray(np.stack([pixels] * 3, -1)).save(f"{path}.PNG")  # RGB, upper case.
    return root


def image_ids(images: np.ndarray) -> list[int]:
    """Recovers the folder fixture's identities from model-range images [b, H, W, C]."""
    values = (images[:, 0, 0, 0] + 1) * 127.5
    return [int(i) for i in np.round(values / 8)]


def digits_cfg(data_dir, **kw):
    return ConfigDict({"data_dir": data_dir, **kw})


def folder_cfg(root, **kw):
    return ConfigDict({"source": "folder", "train_dir": str(root), "eval_fraction": 0.2, **kw})


def open_digits(data_dir, **kw) -> data.Dataset:
    return data.open_dataset(data.data_options(digits_cfg(data_dir, **kw)))


def open_folder(root, **kw) -> data.Dataset:
    return data.open_dataset(data.data_options(folder_cfg(root, **kw)))


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


# ---------------------------------------------------------------------------------------------
# The embedded digits.


def test_digits_splits_sizes_and_stratification(digits_dir):
    dataset = open_digits(digits_dir)
    train, test, channels = dataset.train, dataset.eval, dataset.info.channels
    assert (len(train), len(test), channels) == (1500, 297, 1)
    digit_names = tuple(str(i) for i in range(10))  # what a run stores and predict shows
    assert dataset.info == data.DatasetInfo(10, 1500, 297, 1, class_names=digit_names)
    from sklearn.datasets import load_digits

    share = np.bincount(load_digits().target, minlength=10) / 1797
    test_counts = np.bincount([test[i]["label"] for i in range(len(test))], minlength=10)
    np.testing.assert_allclose(test_counts, share * 297, atol=1)
    example = test[0]
    assert example["image"].shape == (8, 8, 1) and example["image"].dtype == np.uint8


def test_digits_builds_identically_and_idempotently(digits_dir, tmp_path):
    digits.prepare_digits(str(tmp_path))
    digits.prepare_digits(str(tmp_path))  # Already built: a no-op.
    for split in ("train", "eval"):
        a = open_digits(digits_dir).split(split)
        b = open_digits(str(tmp_path)).split(split)
        for i in range(len(a)):
            assert a[i]["label"] == b[i]["label"]
            np.testing.assert_array_equal(a[i]["image"], b[i]["image"])


# ---------------------------------------------------------------------------------------------
# Training batches and checkpointable iterators.


def test_train_batches_shapes_range_and_seeds(digits_dir):
    dataset = open_digits(digits_dir, augment="inception", crop_area_min=0.5, cache=True)
    loader = lambda seed: iter(
        data.train_loader(dataset, image_size=(16, 12), global_batch_size=32, seed=seed)
    )
    first = take(loader(0), 3)
    batch = first[0]
    assert batch["image"].shape == (32, 16, 12, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
    assert -1 <= batch["image"].min() < batch["image"].max() <= 1
    assert_batches_equal(first, take(loader(0), 3))
    other = take(loader(1), 3)
    assert not np.array_equal(first[0]["label"], other[0]["label"])
    assert not np.array_equal(first[0]["image"], other[0]["image"])


def test_train_epochs_are_reshuffled_and_complete(folder):
    dataset = open_folder(folder, eval_fraction=0.0)
    it = iter(data.train_loader(dataset, image_size=(6, 4), global_batch_size=10, seed=0))
    epochs = [sum((image_ids(b["image"]) for b in take(it, 3)), []) for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(NUM_FOLDER_IMAGES))
    assert epochs[0] != epochs[1]


def test_iterator_state_resumes_at_exactly_the_next_batch(digits_dir):
    dataset = open_digits(digits_dir, augment="inception", crop_area_min=0.3, flip=True, cache=True)
    loader = data.train_loader(dataset, image_size=(16, 16), global_batch_size=64, seed=3)
    it = iter(loader)
    take(it, 25)  # Crosses the first epoch (1,500 / 64 = 23.4 batches).
    state = it.get_state()
    expected = take(it, 3)
    resumed = iter(loader)
    resumed.set_state(state)
    assert_batches_equal(expected, take(resumed, 3))


def test_iterator_state_in_an_orbax_checkpoint(digits_dir, tmp_path):
    loader = data.train_loader(
        open_digits(digits_dir, cache=True), image_size=(8, 8), global_batch_size=16, seed=0
    )
    it = iter(loader)
    take(it, 4)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        manager.wait_until_finished()
        expected = take(it, 2)
        fresh = iter(loader)
        restored = manager.restore(
            4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh))
        )
    assert_batches_equal(expected, take(restored["data"], 2))


def test_batch_size_must_divide_among_processes(digits_dir):
    two = grain.sharding.ShardOptions(shard_index=0, shard_count=2)
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        data.train_loader(
            open_digits(digits_dir), image_size=(8, 8), global_batch_size=33, seed=0, shard=two
        )


# ---------------------------------------------------------------------------------------------
# Evaluation and sharding.


def test_eval_covers_every_example_once_with_padding(digits_dir):
    dataset = open_digits(digits_dir)
    batches = list(data.eval_batches(dataset, image_size=(8, 8), global_batch_size=64))
    assert len(batches) == 5  # ceil(297 / 64)
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    assert mask.dtype == np.float32 and mask.sum() == 297
    assert batches[-1]["image"].shape == (64, 8, 8, 1)
    source = dataset.eval
    expected = collections.Counter(source[i]["label"] for i in range(len(source)))
    assert collections.Counter(labels[mask == 1].tolist()) == expected


def test_two_processes_get_disjoint_shards_covering_the_split(folder):
    dataset = open_folder(folder, eval_fraction=0.0)
    shards = [grain.sharding.ShardOptions(shard_index=i, shard_count=2) for i in range(2)]

    def eval_ids(shard):
        batches = list(
            data.eval_batches(
                dataset, image_size=(6, 4), global_batch_size=8, split="train", shard=shard
            )
        )
        assert len(batches) == 4  # ceil(15 / 4), the same on every process.
        images = np.concatenate([b["image"] for b in batches])
        mask = np.concatenate([b["mask"] for b in batches])
        return image_ids(images[mask == 1])

    def first_epoch_ids(shard):
        # One shard epoch: 15 examples = 3 per-process batches of 5.
        loader = data.train_loader(
            dataset, image_size=(6, 4), global_batch_size=10, seed=0, shard=shard
        )
        return image_ids(np.concatenate([b["image"] for b in take(iter(loader), 3)]))

    for ids in ([eval_ids(s) for s in shards], [first_epoch_ids(s) for s in shards]):
        assert not set(ids[0]) & set(ids[1])
        assert sorted(ids[0] + ids[1]) == list(range(NUM_FOLDER_IMAGES))


# ---------------------------------------------------------------------------------------------
# Image folders.


def test_folder_source_classes_labels_and_shapes(folder):
    dataset = open_folder(folder)
    info = dataset.info
    assert info == data.DatasetInfo(
        num_classes=3, num_train=24, num_eval=6, channels=3, class_names=FOLDER_CLASSES
    )
    index = data.scan_folder(str(folder))
    assert index.classes == FOLDER_CLASSES and len(index.paths) == NUM_FOLDER_IMAGES
    source = data.ImageFolderSource(index)
    for i in range(len(source)):
        example = source[i]
        assert example["image"].shape == (6, 4, 3) and example["image"].dtype == np.uint8
        identity = example["image"][0, 0, 0] // 8
        assert example["label"] == FOLDER_CLASSES.index(index.paths[i].split("/")[-2])
        assert example["label"] == identity % 3
    # The held-out split is stratified (2 of 10 per class) and disjoint from training.
    train, held = dataset.train, dataset.eval
    held_labels = [held[i]["label"] for i in range(len(held))]
    assert sorted(held_labels) == [0, 0, 1, 1, 2, 2]
    assert not set(train.index.paths) & set(held.index.paths)


def test_folder_eval_dir(folder, tmp_path):
    (tmp_path / "cat").mkdir()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "cat" / "a.jpeg")
    dataset = open_folder(folder, eval_dir=str(tmp_path))
    info = dataset.info
    assert (info.num_train, info.num_eval) == (NUM_FOLDER_IMAGES, 1)
    held = dataset.eval
    assert held[0]["label"] == 2
    (tmp_path / "dog").mkdir()
    with pytest.raises(ValueError, match="not among the training classes"):
        open_folder(folder, eval_dir=str(tmp_path))


def count_calls(monkeypatch, module, name: str) -> list:
    """Replaces `module.name` by a wrapper that appends to the returned list at every call."""
    calls, original = [], getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


class DecodesUnder:
    """The recorded decode_image calls of files under `root`, as a sized view."""

    def __init__(self, calls: list, root: str):
        self.calls, self.root = calls, root

    def __len__(self) -> int:
        return sum(str(args[0]).startswith(self.root) for args in self.calls)


@pytest.mark.parametrize("cache", [True, False])
def test_a_folder_is_walked_once_and_cached_images_decoded_once(
    folder, monkeypatch, cache, tmp_path
):
    # A folder of its own: read-ahead threads that other tests left may still read `folder`.
    own = shutil.copytree(folder, tmp_path / "own")
    walks = count_calls(monkeypatch, pipeline, "scan_folder")
    calls = count_calls(monkeypatch, folder_module, "decode_image")
    decodes = DecodesUnder(calls, str(own))
    dataset = open_folder(own, cache=cache)
    assert len(walks) == 1
    assert len(decodes) == (NUM_FOLDER_IMAGES if cache else 0)  # both splits, at open
    it = iter(data.train_loader(dataset, image_size=(6, 4), global_batch_size=8, seed=0))
    take(it, 2)
    it.close()  # no read-ahead thread left decoding for the next test
    for _ in range(2):  # two evaluation passes reuse the opened (and cached) splits
        batches = list(data.eval_batches(dataset, image_size=(6, 4), global_batch_size=4))
        assert sum(b["mask"].sum() for b in batches) == dataset.info.num_eval == 6
    assert len(walks) == 1
    if cache:
        assert len(decodes) == NUM_FOLDER_IMAGES


@pytest.fixture
def folder_with_bad_image(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.fromarray(np.full((4, 4, 3), 40 * i, np.uint8)).save(tmp_path / name / f"{i}.jpg")
    (tmp_path / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return tmp_path


def test_unreadable_image_skip_drops_and_counts(folder_with_bad_image, caplog):
    dataset = open_folder(folder_with_bad_image, eval_fraction=0.0, bad_image="skip")
    source = dataset.train
    with caplog.at_level("WARNING"):
        examples = [source[i] for i in range(len(source))]
    assert sum(e is None for e in examples) == 1 and source.num_skipped == 1
    assert "broken.jpg" in caplog.text
    batches = list(
        data.eval_batches(dataset, split="train", image_size=(4, 4), global_batch_size=4)
    )
    assert sum(b["mask"].sum() for b in batches) == 8
    it = iter(data.train_loader(dataset, image_size=(4, 4), global_batch_size=4, seed=0))
    assert all(b["image"].shape == (4, 4, 4, 3) for b in take(it, 6))  # Full batches.


def test_unreadable_image_stop_names_the_file_and_the_fix(folder_with_bad_image):
    dataset = open_folder(folder_with_bad_image, eval_fraction=0.0, bad_image="stop")
    it = iter(data.train_loader(dataset, image_size=(4, 4), global_batch_size=3, seed=0))
    with pytest.raises(data.UnreadableImageError, match="broken.jpg") as stopped:
        take(it, 3)  # One epoch of 9 examples.
    assert str(stopped.value).startswith("cannot read image ")
    assert "replace or delete it, or set --config.data.bad_image=skip" in str(stopped.value)


def test_folder_errors(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match="does not exist"):
        open_folder(missing)
    with pytest.raises(ValueError, match="no class subfolders"):
        open_folder(tmp_path)
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "readme.txt").write_text("")
    with pytest.raises(ValueError, match=f"{tmp_path}.*contains no images"):
        open_folder(tmp_path)
    with pytest.raises(ValueError, match="train_dir"):
        data.data_options(ConfigDict({"source": "folder"}))


# ---------------------------------------------------------------------------------------------
# tfds errors and transforms.


def test_unprepared_and_unknown_tfds_datasets(tmp_path):
    with pytest.raises(data.DatasetNotPreparedError) as error:
        open_digits(str(tmp_path), name="mnist")
    prepare = f"tfds.builder('mnist', data_dir='{tmp_path}', file_format='array_record')"
    assert prepare + ".download_and_prepare()" in str(error.value)
    with pytest.raises(ValueError, match="Unknown tfds dataset"):
        open_digits(str(tmp_path), name="no_such_dataset")


def test_bad_config_values(digits_dir):
    with pytest.raises(ValueError, match="augment"):
        data.data_options(digits_cfg(digits_dir, augment="mixup"))
    with pytest.raises(ValueError, match="no split"):
        open_digits(digits_dir, eval_split="validation")


def test_16_bit_grayscale_decodes_as_its_8_bit_picture(tmp_path):
    """A 16-bit grayscale PNG (values 0-65535) gives the 8-bit image it was made from, gray or
    as RGB; Pillow's own conversion would clip every value above 255 to white."""
    gray = np.random.default_rng(0).integers(0, 256, (6, 5), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "8.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "16.png")
    Image.fromarray(gray.astype(np.int32)).save(tmp_path / "32.tiff")  # "I" holding 8-bit values
    assert Image.open(tmp_path / "16.png").mode in transforms.WIDE_GRAY
    assert Image.open(tmp_path / "32.tiff").mode == "I"
    for rgb in (False, True):
        want = transforms.decode_image(str(tmp_path / "8.png"), rgb=rgb, where="8")
        for name in ("16.png", "32.tiff"):
            got = transforms.decode_image(str(tmp_path / name), rgb=rgb, where=name)
            assert got.dtype == np.uint8 and got.shape == (6, 5, 3 if rgb else 1)
            np.testing.assert_array_equal(got, want)


def test_inception_crop_box_stays_inside_and_respects_area():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = transforms.inception_crop_box(30, 50, rng, area_range=(0.3, 1.0))
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 50
        assert h * w >= 0.3 * 30 * 50 * 0.8  # Rounding of small sides.


def test_resize_and_range():
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    out = transforms.crop_and_resize(image, (0, 0, 4, 6), (8, 12))
    assert out.shape == (8, 12, 3) and out.dtype == np.uint8
    gray = transforms.crop_and_resize(image[..., :1], (1, 1, 2, 2), (5, 3))
    assert gray.shape == (5, 3, 1)
    scaled = transforms.to_model_range(np.array([0, 255], np.uint8))
    np.testing.assert_allclose(scaled, [-1, 1])
