"""`vit_jax.pretrained` and the published names: a name downloaded (from a local server standing
in for the public bucket) and restored at another resolution and class count, the model each
name describes, the class names a checkpoint comes with, and Flax msgpack files."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization, traverse_util

import vit_jax
from tests.conftest import SMALL, random_params
from tests.file_server import serving
from vit_jax import checkpoint, models
from vit_jax.checkpoint import download, layout, published
from vit_jax.data import class_names
from vit_jax.train.config import base_config, validate

TI16_I21K = "augreg:Ti/16-i21k"


def npz_bytes(flat: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **flat)
    return buffer.getvalue()


def stored_ti16() -> dict:
    """Random parameters of the model that augreg:Ti/16-i21k holds, flat, as float16 (half the
    bytes to serve; restoring casts them to the model's float32)."""
    model = models.build(published.PUBLISHED[TI16_I21K].model_fields())
    x = jax.ShapeDtypeStruct((1, *model.image_size, 3), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    rng = np.random.default_rng(0)
    return {
        "/".join(k): (0.02 * rng.standard_normal(s.shape, np.float32)).astype(np.float16)
        for k, s in traverse_util.flatten_dict(shapes).items()
    }


def test_a_published_name_is_downloaded_once_and_restored_at_the_asked_size(tmp_path, monkeypatch):
    stored = stored_ti16()
    bucket_path = published.PUBLISHED[TI16_I21K].url.removeprefix("gs:/")
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
    with serving() as server:
        server.files[bucket_path] = npz_bytes(stored)
        monkeypatch.setenv(download.GCS_ENDPOINT_ENV, server.url(""))
        model, params = vit_jax.pretrained(TI16_I21K, num_classes=10, image_size=32, verbose=0)
        assert checkpoint.open_checkpoint(TI16_I21K).model().num_classes == 21843
        assert [path for path, _ in server.requests] == [bucket_path]  # then from the cache
    assert (model.hidden_size, model.num_layers, model.patch_size) == (192, 12, (16, 16))
    assert (model.image_size, model.num_classes) == ((32, 32), 10)
    flat = traverse_util.flatten_dict(params, sep="/")
    posemb = "Transformer/posembed_input/pos_embedding"
    # Resized as stored (float16, computed in float32), then cast to the model's float32.
    expected = checkpoint.resize_posemb(stored[posemb], (2, 2), num_prefix_tokens=1)
    np.testing.assert_array_equal(flat[posemb], np.asarray(expected, np.float32))  # 14x14 -> 2x2
    np.testing.assert_array_equal(flat["head/kernel"], np.zeros((192, 10)))  # a new head
    for key in ("embedding/kernel", "Transformer/encoderblock_11/MlpBlock_3/Dense_1/kernel"):
        np.testing.assert_array_equal(flat[key], stored[key].astype(np.float32))


@pytest.mark.parametrize(
    "name,image_size,num_classes,parameters",
    [
        # ViT-B/16 as published: at 224 px with 1000 classes 86,567,656 parameters; the original
        # ImageNet-21k file adds a 768-wide pre-logits layer and 21,843 classes: 103,186,515.
        ("vit:B/16-i21k", 224, 21843, 103_186_515),
        ("augreg:B/16-i21k", 224, 21843, 102_595_923),
        ("augreg:B/16-i21k+i1k", 384, 1000, 86_567_656 + (577 - 197) * 768),
        ("vit:B/16-i21k+i1k-224", 224, 1000, 86_567_656),
    ],
)
def test_published_names_describe_the_published_models(name, image_size, num_classes, parameters):
    model = models.build(published.PUBLISHED[name].model_fields())
    assert model.image_size == (image_size, image_size) and model.num_classes == num_classes
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    assert sum(s.size for s in jax.tree.leaves(shapes)) == parameters


def test_every_published_name_follows_the_naming_scheme_and_builds_its_model():
    for name, entry in published.PUBLISHED.items():
        collection, data = name.split(":")[0], name.split("-", 1)[1]
        model = models.build(entry.model_fields())
        patch = int(entry.variant.split("/")[1])
        assert name.startswith(f"{collection}:{entry.variant}-")
        assert model.patch_size == (patch, patch)
        folder = "augreg" if collection == "augreg" else data.replace("i1k", "imagenet2012")
        folder = folder.replace("i21k", "imagenet21k").removesuffix("-224")
        assert entry.url.startswith(f"{published.BUCKET}/{folder}/")
        fine_tuned = "+i1k" in data
        assert entry.num_classes == (1000 if fine_tuned else 21843)
        assert (entry.class_names == published.IMAGENET2012) == fine_tuned
        assert model.image_size[0] == (384 if fine_tuned and not name.endswith("-224") else 224)


def test_a_misspelled_init_from_name_fails_when_the_config_is_checked():
    config = base_config()
    config.init_from = "augreg:B/16-21k"
    with pytest.raises(ValueError, match="did you mean 'augreg:B/16-i21k'"):
        validate(config)


def tiny(num_classes=5, image_size=16, **overrides):
    return models.create(
        "Ti/4", num_classes=num_classes, image_size=image_size, **{**SMALL, **overrides}
    )


def test_class_names_come_with_the_checkpoint(tmp_path):
    model = tiny(num_classes=3)
    config = {"model": {"variant": "Ti/4", "num_classes": 3, "image_size": 16, **SMALL}}
    config[layout.CLASS_NAMES] = ["n01440764", "cat", "dog"]  # a WordNet ID becomes words
    checkpoint.save_orbax_params(tmp_path / "run", random_params(model), config=config)
    opened = checkpoint.open_checkpoint(tmp_path / "run")
    assert opened.class_names == ("tench, Tinca tinca", "cat", "dog")
    assert opened.model() == model
    # An official file without config: 1000 classes are ImageNet-1k's, others have no names.
    checkpoint.export_npz(tmp_path / "in1k.npz", random_params(tiny(num_classes=1000)))
    assert checkpoint.open_checkpoint(tmp_path / "in1k.npz").class_names == (
        class_names.imagenet2012()
    )
    checkpoint.export_npz(tmp_path / "other.npz", random_params(model))
    assert checkpoint.open_checkpoint(tmp_path / "other.npz").class_names is None
    assert class_names.imagenet2012()[281] == "tabby, tabby cat"


def test_an_exported_model_comes_back_as_it_was_and_a_guessed_one_says_so(tmp_path, capsys):
    model = tiny(posemb="learned+rope_axial")
    params = random_params(model)
    images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3), minval=-1, maxval=1)
    want = model.apply({"params": params}, images)
    checkpoint.export_npz(tmp_path / "with.npz", params, model=model)
    loaded, loaded_params = vit_jax.pretrained(tmp_path / "with.npz")
    assert loaded == model and "stores no config" not in capsys.readouterr().out
    np.testing.assert_array_equal(loaded.apply({"params": loaded_params}, images), want)
    checkpoint.export_npz(tmp_path / "bare.npz", params)  # shapes only: rope_axial is lost
    guessed, _ = vit_jax.pretrained(tmp_path / "bare.npz")
    assert guessed.posemb == "learned"
    out = capsys.readouterr().out
    assert "bare.npz stores no config: its model is inferred from the parameter shapes" in out
    assert "pass e.g. posemb='learned+rope_axial'" in out


# --- Flax msgpack ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout_of",
    [
        lambda p: (p, {"trace": p}, 7),  # the official fine-tuning: (params, opt_state, step)
        lambda p: {"target": p, "state": {"step": 7}},  # a flax.optim optimizer
        lambda p: {"step": 7, "params": p, "opt_state": {}},  # a TrainState
        lambda p: p,
    ],
)
def test_flax_msgpack_checkpoints_load_as_stored(tmp_path, layout_of):
    model = tiny()
    params = random_params(model)
    path = tmp_path / "checkpoint_7"  # the name flax.training.checkpoints gives
    path.write_bytes(serialization.to_bytes(layout_of(params)))
    loaded, meta = checkpoint.load_params(path)
    assert meta["format"] == "msgpack"
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    model2, restored = vit_jax.pretrained(path, image_size=32, verbose=False)
    # the model, told by the shapes alone, and the grid its embedding was trained on
    assert model2 == tiny(image_size=32, posemb_grid=(4, 4))
    assert restored["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 65, 32)


def test_a_damaged_msgpack_file_is_one_clear_error(tmp_path):
    data = serialization.to_bytes(random_params(tiny()))
    (tmp_path / "cut.msgpack").write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.UnreadableCheckpointError, match="truncated"):
        checkpoint.load_params(tmp_path / "cut.msgpack")
    (tmp_path / "list.msgpack").write_bytes(serialization.msgpack_serialize([1, 2]))
    with pytest.raises(checkpoint.UnreadableCheckpointError, match="not a tree of parameters"):
        checkpoint.checkpoint_shapes(tmp_path / "list.msgpack")
