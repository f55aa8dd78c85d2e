"""Checkpoints: grid resizes per variant, restore into other models, .npz layouts, errors, tools.

Models are tiny (width 32, 2 blocks) and parameters random numpy arrays (zero-initialised heads
would hide mistakes); shapes come from jax.eval_shape so that little is compiled.
"""

import json
import os
import subprocess
import sys
import zipfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util
from PIL import Image

from tests.conftest import SMALL, random_params
from vit_jax import checkpoint, models
from vit_jax.checkpoint import architecture, manager, restore
from vit_jax.checkpoint import report as report_lib
from vit_jax.models import patch_embed, posemb, resize
from vit_jax.models.posemb import relative
from vit_jax.tools import convert as convert_tool
from vit_jax.tools import inspect as inspect_tool
from vit_jax.train.state import create_state

TIMM_REASON = "timm (and torch) not installed: pip install -e '.[timm]' to cross-check with timm"


def tiny(image_size=16, variant="Ti/4", num_classes=5, **overrides):
    return models.create(
        variant, num_classes=num_classes, image_size=image_size, **{**SMALL, **overrides}
    )


def config_of(image_size=16, variant="Ti/4", num_classes=5, **overrides):
    """The {"model": ...} entry the trainer stores with a checkpoint of `tiny(...)`."""
    fields = {"variant": variant, "num_classes": num_classes, "image_size": image_size}
    return {"model": {**fields, **SMALL, **overrides}}


def logits(model, params, seed=0):
    x = np.random.default_rng(seed).uniform(-1, 1, (2, *model.image_size, 3)).astype(np.float32)
    return np.asarray(model.apply({"params": params}, x))


def assert_trees_equal(a, b):
    chex.assert_trees_all_equal(a, b)  # the same structure, leaves exactly equal


def normal(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --- the resize of each variant -------------------------------------------------------------


@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_resize_to_the_same_grid_is_the_identity(prefix):
    pe = normal((1, prefix + 12, 8))
    same = checkpoint.resize_posemb(pe, (3, 4), num_prefix_tokens=prefix, old_grid=(3, 4))
    np.testing.assert_array_equal(same, pe)
    table = normal((3, 8))
    np.testing.assert_array_equal(posemb.resize_factorized(table, 3), table)
    bias = normal((relative.num_relative_positions((3, 4), 1), 4))
    np.testing.assert_array_equal(
        relative.resize_bias_table(bias, (3, 4), (3, 4), num_prefix_tokens=1), bias
    )
    kernel = normal((4, 4, 3, 8))
    np.testing.assert_array_equal(patch_embed.resize_kernel(kernel, (4, 4)), kernel)


@pytest.mark.parametrize(
    "method,antialias", [("linear", False), ("cubic", True), ("cubic", False), ("lanczos3", True)]
)
@pytest.mark.parametrize(
    "old,new", [((4, 4), (7, 7)), ((7, 7), (4, 4)), ((3, 5), (6, 4)), ((6, 4), (2, 9))]
)
def test_resize_is_jax_image_resize_of_the_grid_with_prefix_rows_untouched(
    method, antialias, old, new
):
    d = 6
    pe = normal((1, 1 + old[0] * old[1], d))
    out = checkpoint.resize_posemb(
        pe, new, num_prefix_tokens=1, old_grid=old, method=method, antialias=antialias
    )
    assert out.shape == (1, 1 + new[0] * new[1], d)
    expected = jax.image.resize(pe[0, 1:].reshape(*old, d), (*new, d), method, antialias=antialias)
    np.testing.assert_array_equal(out[0, 1:].reshape(*new, d), expected)
    np.testing.assert_array_equal(out[0, 0], pe[0, 0])


def test_square_grid_is_inferred_and_a_non_square_one_must_be_given():
    pe = normal((1, 1 + 16, 4))
    inferred = checkpoint.resize_posemb(pe, (5, 3), num_prefix_tokens=1)
    given = checkpoint.resize_posemb(pe, (5, 3), num_prefix_tokens=1, old_grid=(4, 4))
    np.testing.assert_array_equal(inferred, given)
    with pytest.raises(ValueError, match=r"not a square.*old_grid=\(rows, cols\)"):
        checkpoint.resize_posemb(normal((1, 1 + 12, 4)), (4, 4), num_prefix_tokens=1)


def test_several_prefix_rows_stay_bit_exact():
    pe = normal((1, 2 + 9, 4))  # class and distillation tokens
    out = checkpoint.resize_posemb(pe, (5, 2), num_prefix_tokens=2)
    np.testing.assert_array_equal(out[0, :2], pe[0, :2])


def test_learned_layouts_convert_both_ways():
    official = normal((1, 1 + 9, 4))  # class slot first
    big_vision = checkpoint.resize_posemb(
        official, (4, 4), num_prefix_tokens=1, new_num_prefix_tokens=0
    )
    grid_only = checkpoint.resize_posemb(official[:, 1:], (4, 4), num_prefix_tokens=0)
    np.testing.assert_array_equal(big_vision, grid_only)
    back = checkpoint.resize_posemb(
        big_vision, (4, 4), num_prefix_tokens=0, new_num_prefix_tokens=1
    )
    assert back.shape == (1, 17, 4)
    np.testing.assert_array_equal(back[0, 0], np.zeros(4))  # the class token gets no position
    np.testing.assert_array_equal(back[:, 1:], big_vision)


def torch_bicubic_reference(x, new):
    """torch's upsample_bicubic2d (align_corners=False, no antialias), written out with loops:
    Keys cubic a=-0.75, source index (j + 0.5) * in / out - 0.5, taps clamped at the border."""

    def kernel(t):
        t, a = abs(t), -0.75
        if t <= 1:
            return ((a + 2) * t - (a + 3)) * t * t + 1
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a if t < 2 else 0.0

    def resize_axis(x, new):
        old = x.shape[0]
        out = np.zeros((new, *x.shape[1:]))
        for j in range(new):
            src = (j + 0.5) * old / new - 0.5
            i = int(np.floor(src))
            for k in range(i - 1, i + 3):
                out[j] += kernel(src - k) * x[min(max(k, 0), old - 1)]
        return out

    rows = resize_axis(x, new[0])
    return np.swapaxes(resize_axis(np.swapaxes(rows, 0, 1), new[1]), 0, 1)


@pytest.mark.parametrize(
    "old,new", [((14, 14), (24, 24)), ((24, 24), (14, 14)), ((14, 14), (20, 28))]
)
def test_cubic_pytorch_is_torch_bicubic(old, new):
    grid = normal((*old, 5))
    ours = resize.resize_grid(grid, new, "cubic-pytorch", antialias=False)
    np.testing.assert_allclose(ours, torch_bicubic_reference(grid, new), atol=3e-6)
    # With antialiasing torch switches to the a=-0.5 kernel of jax's cubic.
    np.testing.assert_array_equal(
        resize.resize_grid(grid, new, "cubic-pytorch", antialias=True),
        resize.resize_grid(grid, new, "cubic", antialias=True),
    )


def test_unknown_resize_method_is_refused():
    with pytest.raises(ValueError, match="method='bicubic' is unknown"):
        resize.resize_grid(normal((3, 3, 2)), (4, 4), "bicubic")


def test_factorized_tables_resize_in_one_dimension():
    row = normal((3, 8))
    out = posemb.resize_factorized(row, 5, method="linear", antialias=False)
    np.testing.assert_array_equal(out, jax.image.resize(row, (5, 8), "linear", antialias=False))


@pytest.mark.parametrize("new_prefix", [1, 0])
def test_relative_bias_table_resizes_its_offset_grid_and_keeps_class_rows(new_prefix):
    old, new, heads = (2, 3), (4, 3), 4
    table = normal((relative.num_relative_positions(old, 1), heads))
    out = relative.resize_bias_table(
        table, old, new, num_prefix_tokens=1, new_num_prefix_tokens=new_prefix
    )
    assert out.shape == (relative.num_relative_positions(new, new_prefix), heads)
    offsets = jax.image.resize(table[:15].reshape(3, 5, heads), (7, 5, heads), "cubic")
    np.testing.assert_array_equal(out[:35], offsets.reshape(35, heads))
    np.testing.assert_array_equal(out[35:], table[15:] if new_prefix else table[:0])


@pytest.mark.parametrize("new_patch", [(8, 8), (6, 10)])
def test_patch_kernel_resize_gives_resized_patches_the_same_embedding(new_patch):
    kernel, patches = normal((4, 4, 3, 8)), normal((16, 4, 4, 3), seed=1)
    new_kernel = patch_embed.resize_kernel(kernel, new_patch)
    assert new_kernel.shape == (*new_patch, 3, 8)
    resized = jax.image.resize(patches, (16, *new_patch, 3), "linear", antialias=False)
    np.testing.assert_allclose(
        jnp.einsum("bhwc,hwcd->bd", resized, new_kernel),
        jnp.einsum("bhwc,hwcd->bd", patches, kernel),
        rtol=1e-4,
        atol=1e-4,
    )


# --- restore into a model ---------------------------------------------------------------------


def save_like_the_trainer(workdir, params, config, step=3):
    """A checkpoint as the trainer writes it: the whole train state (with optimizer state) and
    the config, through the trainer's own manager."""
    state = create_state(jax.tree.map(jnp.asarray, params), optax.adamw(1e-3), jax.random.key(0))
    with manager.open_manager(str(workdir), keep=2, save_every=1) as m:
        items = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config))
        m.save(step, args=ocp.args.Composite(**items))
        m.wait_until_finished()
    return workdir / "checkpoints"


def test_restore_into_the_same_model_is_bit_exact(tmp_path):
    model = tiny()
    params = random_params(model)
    checkpoint.export_npz(tmp_path / "a.npz", params)
    checkpoints = save_like_the_trainer(tmp_path / "run", params, config_of())
    for path in (tmp_path / "a.npz", tmp_path / "run", checkpoints, checkpoints / "3"):
        restored, report = checkpoint.restore_into(path, model, jax.random.key(0), verbose=False)
        assert_trees_equal(restored, params)
        assert {e.action for e in report.entries} == {report_lib.LOADED}
    assert checkpoint.load_params(checkpoints)[1]["step"] == 3


@pytest.mark.parametrize(
    "name,resized",
    [
        ("learned+relative", ["posembed_input/pos_embedding", "relative_position_bias_table"]),
        ("factorized+rope_mixed", ["posembed_input/row_embedding", "posembed_input/col_embedding"]),
        ("sincos2d+rope_axial", []),
    ],
)
def test_restore_at_twice_the_resolution_resizes_grid_parameters(tmp_path, name, resized, capsys):
    params = random_params(tiny(posemb=name))
    path = tmp_path / "ckpt"
    checkpoint.save_orbax_params(path, params, config=config_of(posemb=name))
    big = tiny(image_size=(32, 24), posemb=name)
    restored, report = checkpoint.restore_into(path, big, jax.random.key(0))
    expected = random_params(big)
    assert jax.tree.map(np.shape, restored) == jax.tree.map(np.shape, expected)
    changed = report.keys(report_lib.RESIZED)
    assert len(changed) == sum(1 + (k == "relative_position_bias_table") for k in resized)
    assert all(any(k.endswith(r) for r in resized) for k in changed)
    if "rope_mixed" in name:  # learned frequencies extend to any grid: kept as they are
        block = "MultiHeadDotProductAttention_1"
        np.testing.assert_array_equal(
            restored["Transformer"]["encoderblock_1"][block]["rope_frequencies"],
            params["Transformer"]["encoderblock_1"][block]["rope_frequencies"],
        )
    printed = capsys.readouterr().out
    resized_rows = [line for line in printed.splitlines() if line.startswith("  resized")]
    assert len(resized_rows) == len(resized) and all("→" in line for line in resized_rows)
    assert np.isfinite(logits(big, restored)).all()


def test_another_patch_size_resizes_only_the_patch_kernel():
    params = random_params(tiny())  # Ti/4 at 16 px: grid 4x4
    new, report = checkpoint.adapt_params(params, tiny(32, "Ti/8"), jax.random.key(0))
    assert report.keys(report_lib.RESIZED) == ["embedding/kernel"]  # same grid: posemb as is
    np.testing.assert_array_equal(
        new["embedding"]["kernel"], patch_embed.resize_kernel(params["embedding"]["kernel"], (8, 8))
    )


def test_rgb_and_grayscale_checkpoints_convert_to_the_other_channel_count():
    """An RGB checkpoint restored for grayscale images: each gray image x gives the logits the
    RGB model gave (x, x, x); a grayscale one restored for RGB: (x, x, x) gives x's logits."""
    model = tiny(image_size=16, variant="Ti/4")
    gray = np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 1)).astype(np.float32)
    rgb = np.repeat(gray, 3, axis=-1)
    apply = lambda p, x: np.asarray(model.apply({"params": p}, x))
    for stored_channels, channels in ((3, 1), (1, 3)):
        params = random_params(model, channels=stored_channels)
        new, report = checkpoint.adapt_params(params, model, jax.random.key(0), channels=channels)
        assert new["embedding"]["kernel"].shape[2] == channels
        assert report.keys(report_lib.CONVERTED) == ["embedding/kernel"]
        before, after = (rgb, gray) if stored_channels == 3 else (gray, rgb)
        np.testing.assert_allclose(apply(new, after), apply(params, before), atol=2e-5)
    # with a new patch size as well: both conversions, one entry
    _, report = checkpoint.adapt_params(
        random_params(model), tiny(32, "Ti/8"), jax.random.key(0), channels=1
    )
    (entry,) = [e for e in report.entries if e.key == "embedding/kernel"]
    assert entry.action == report_lib.RESIZED and "3 → 1 image channels" in entry.note
    with pytest.raises(ValueError, match="only to or from one channel"):  # RGB -> 4: no rule
        patch_embed.convert_channels(normal((4, 4, 3, 8)), 4)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="to or from one channel"):
        checkpoint.adapt_params(random_params(model), model, jax.random.key(0), channels=4)


def test_variables_for_parameters_are_refused_with_what_to_pass(tmp_path):
    params = random_params(tiny())
    for call in (
        lambda: checkpoint.adapt_params({"params": params}, tiny(32), jax.random.key(0)),
        lambda: checkpoint.export_npz(tmp_path / "x.npz", {"params": params}),
    ):
        with pytest.raises(ValueError, match=r"got keys \['params'\]: pass variables\['params'\]"):
            call()
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_new_class_count_reinitialises_the_head_and_pre_logits_as_asked():
    params = random_params(tiny(representation_size=16))
    rng = jax.random.key(0)
    new, report = checkpoint.adapt_params(params, tiny(num_classes=7, representation_size=16), rng)
    assert set(report.keys(report_lib.REINIT)) == {
        "head/kernel",
        "head/bias",
        "pre_logits/kernel",
        "pre_logits/bias",
    }
    np.testing.assert_array_equal(new["head"]["kernel"], np.zeros((16, 7)))  # zero-initialised
    kept, report = checkpoint.adapt_params(
        params, tiny(num_classes=7, representation_size=16), rng, keep_pre_logits=True
    )
    np.testing.assert_array_equal(kept["pre_logits"]["kernel"], params["pre_logits"]["kernel"])
    _, report = checkpoint.adapt_params(params, tiny(num_classes=7), rng)
    assert set(report.keys(report_lib.DROPPED)) == {"pre_logits/kernel", "pre_logits/bias"}
    with pytest.raises(ValueError, match="representation_size=16"):
        checkpoint.adapt_params(params, tiny(num_classes=7), rng, keep_pre_logits=True)


def test_class_rows_of_bias_tables_follow_the_class_token():
    params = random_params(tiny(posemb="relative"))
    block = ("Transformer", "encoderblock_0", "MultiHeadDotProductAttention_1")
    table = traverse_util.flatten_dict(params)[(*block, "relative_position_bias_table")]
    assert table.shape == (49 + 3, 4)
    gap, report = checkpoint.adapt_params(
        params, tiny(posemb="relative", classifier="gap"), jax.random.key(0)
    )
    np.testing.assert_array_equal(
        traverse_util.flatten_dict(gap)[(*block, "relative_position_bias_table")], table[:49]
    )
    assert "cls" in report.keys(report_lib.DROPPED)
    back, report = checkpoint.adapt_params(gap, tiny(posemb="relative"), jax.random.key(0))
    restored = traverse_util.flatten_dict(back)[(*block, "relative_position_bias_table")]
    np.testing.assert_array_equal(restored, np.concatenate([table[:49], np.zeros((3, 4))]))
    assert "cls" in report.keys(report_lib.REINIT)


def test_a_non_square_grid_without_config_is_the_models_if_it_fits(tmp_path):
    model = tiny(image_size=(16, 24))  # 1 + 4 * 6 = 25 rows: also a 5x5 grid without class slot
    params = random_params(model)
    checkpoint.export_npz(tmp_path / "a.npz", params)  # no config stored
    restored, _ = checkpoint.restore_into(tmp_path / "a.npz", model, jax.random.key(0))
    assert_trees_equal(restored, params)
    bigger, report = checkpoint.restore_into(
        tmp_path / "a.npz", tiny(image_size=(32, 48)), jax.random.key(0), old_grid=(4, 6)
    )
    assert "grid 4x6 → 8x12" in str(report)
    with pytest.raises(ValueError, match="old_grid"):
        checkpoint.restore_into(tmp_path / "a.npz", tiny(image_size=(32, 48)), jax.random.key(0))


def test_scanned_and_per_block_checkpoints_restore_into_either_layout(tmp_path):
    scanned, per_block = tiny(scan=True), tiny()
    params = random_params(per_block)
    checkpoint.save_orbax_params(tmp_path / "scanned", models.scan_params(params))
    restored, _ = checkpoint.restore_into(
        tmp_path / "scanned", per_block, jax.random.key(0), verbose=False
    )
    assert_trees_equal(restored, params)
    np.testing.assert_allclose(
        logits(per_block, restored),
        logits(scanned, models.scan_params(params)),
        atol=1e-5,
        rtol=1e-5,
    )
    checkpoint.export_npz(tmp_path / "per_block.npz", params)
    restored, _ = checkpoint.restore_into(
        tmp_path / "per_block.npz", scanned, jax.random.key(0), verbose=False
    )
    assert_trees_equal(restored, models.scan_params(params))


def test_npz_export_import_round_trip_is_bit_exact_in_the_official_layout(tmp_path):
    params = models.scan_params(random_params(tiny()))
    path = tmp_path / "out.npz"
    checkpoint.export_npz(path, params)
    files = set(np.load(path).files)
    assert "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel" in files
    assert "Transformer/posembed_input/pos_embedding" in files
    assert not any(k.startswith("Transformer/encoderblock/") for k in files)
    loaded, meta = checkpoint.load_params(path)
    assert (meta["layout"], meta["naming"], meta["scanned"]) == ("official", "pre-linen", False)
    assert_trees_equal(loaded, models.unscan_params(params))


LINEN_NAMES = {  # as written by Linen's automatic naming (and big_vision)
    "MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
    "LayerNorm_2": "LayerNorm_1",
    "MlpBlock_3": "MlpBlock_0",
}


def write_npz(path, params, *, prefix="", linen=False, extra=None):
    """An .npz written independently of vit_jax.checkpoint, the way other code bases do."""
    flat = {}
    for keys, value in traverse_util.flatten_dict(params).items():
        keys = [LINEN_NAMES.get(k, k) if linen and i == 2 else k for i, k in enumerate(keys)]
        flat[prefix + "/".join(keys)] = np.asarray(value)
    np.savez(path, **flat, **(extra or {}))


@pytest.mark.parametrize("linen", [False, True])
def test_official_files_load_and_give_the_writers_logits(tmp_path, linen):
    model = tiny()
    params = random_params(model)
    write_npz(tmp_path / "official.npz", params, linen=linen)
    restored, _ = checkpoint.restore_into(
        tmp_path / "official.npz", model, jax.random.key(0), verbose=False
    )
    np.testing.assert_array_equal(logits(model, restored), logits(model, params))
    assert checkpoint.load_params(tmp_path / "official.npz")[1]["naming"] == (
        "linen" if linen else "pre-linen"
    )


@pytest.mark.parametrize("classifier,prefix", [("map", "params/"), ("gap", "params/img/")])
def test_big_vision_file_loads_into_a_model_without_class_slot(tmp_path, classifier, prefix):
    model = tiny(posemb_cls_slot=False, classifier=classifier)
    params = random_params(model)
    stored = models.scan_params(params)  # big_vision: scanned, pos_embedding at the top level
    stored["pos_embedding"] = stored["Transformer"].pop("posembed_input")["pos_embedding"]
    assert stored["pos_embedding"].shape == (1, 16, 32)  # no class slot
    # Not parameters of the image model: optimizer state, and a SigLIP text tower.
    junk = {"opt/mu/embedding/kernel": np.zeros(3), "params/txt/head/bias": np.zeros(2)}
    if prefix == "params/":
        del junk["params/txt/head/bias"]
    write_npz(tmp_path / "bv.npz", stored, prefix=prefix, linen=True, extra=junk)
    meta = checkpoint.checkpoint_shapes(tmp_path / "bv.npz")[1]
    assert (meta["layout"], meta["naming"], meta["scanned"]) == ("big_vision", "linen", True)
    restored, _ = checkpoint.restore_into(tmp_path / "bv.npz", model, jax.random.key(0))
    assert_trees_equal(restored, params)
    if classifier == "map":
        np.testing.assert_array_equal(logits(model, restored), logits(model, params))


def test_class_slot_of_an_official_file_folds_into_the_class_token(tmp_path):
    official = tiny()
    params = random_params(official)
    checkpoint.export_npz(tmp_path / "a.npz", params)
    no_slot = tiny(posemb_cls_slot=False)
    restored, report = checkpoint.restore_into(
        tmp_path / "a.npz", no_slot, jax.random.key(0), verbose=False
    )
    assert set(report.keys(report_lib.CONVERTED)) == {
        "cls",
        "Transformer/posembed_input/pos_embedding",
    }
    np.testing.assert_allclose(
        logits(no_slot, restored), logits(official, params), atol=1e-5, rtol=1e-5
    )


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stored,model,message",
    [
        (
            dict(hidden_size=48),
            dict(),
            "parameter 'Transformer/encoder_norm/bias' is stored with shape (48,) but the model "
            "expects (32,)",
        ),
        (
            dict(num_heads=8),
            dict(),
            "parameter 'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/key/bias' "
            "is stored with shape (8, 4) but the model expects (4, 8)",
        ),
        (
            dict(num_layers=3),
            dict(),
            "the checkpoint has 'Transformer/encoderblock_2/LayerNorm_0/bias' (32,), which the "
            "model does not have",
        ),
        (
            dict(),
            dict(num_layers=3),
            "parameter 'Transformer/encoderblock_2/LayerNorm_0/bias' (32,) is not in the "
            "checkpoint",
        ),
        (
            dict(posemb="factorized"),
            dict(),
            "parameter 'Transformer/posembed_input/pos_embedding' (1, 17, 32) is not in the "
            "checkpoint",
        ),
    ],
)
def test_another_architecture_fails_before_reading_and_names_the_parameter(
    tmp_path, monkeypatch, stored, model, message
):
    checkpoint.export_npz(tmp_path / "other.npz", random_params(tiny(**stored)))

    def no_reading(path):
        raise AssertionError("arrays were read before the shapes were checked")

    monkeypatch.setattr(restore, "load_params", no_reading)
    with pytest.raises(checkpoint.CheckpointMismatchError) as error:
        checkpoint.restore_into(tmp_path / "other.npz", tiny(**model), jax.random.key(0))
    assert message in str(error.value)
    assert "python -m vit_jax.tools.inspect" in str(error.value)


def test_missing_truncated_pickled_and_foreign_files_each_get_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint.load_params(tmp_path / "nothing.npz")
    checkpoint.export_npz(tmp_path / "good.npz", random_params(tiny()))
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.UnreadableCheckpointError, match="truncated"):
        checkpoint.load_params(tmp_path / "truncated.npz")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "digit.png")  # not truncated
    with pytest.raises(checkpoint.UnreadableCheckpointError) as refused:
        checkpoint.load_params(tmp_path / "digit.png")
    assert "in another format (it begins b'\\x89PNG" in str(refused.value)
    assert "probably truncated" not in str(refused.value)
    np.savez(tmp_path / "objects.npz", **{"embedding/kernel": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(checkpoint.UnreadableCheckpointError, match="Python objects"):
        checkpoint.load_params(tmp_path / "objects.npz")
    np.savez(tmp_path / "torch.npz", **{"patch_embed.proj.weight": np.zeros((8, 3, 4, 4))})
    with pytest.raises(checkpoint.UnreadableCheckpointError, match="unknown layout"):
        checkpoint.load_params(tmp_path / "torch.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpoint.UnreadableCheckpointError, match="is not a checkpoint"):
        checkpoint.load_params(tmp_path / "empty")
    (tmp_path / "fresh" / "checkpoints" / "2.orbax-checkpoint-tmp").mkdir(parents=True)
    for fresh in ("fresh", "fresh/checkpoints"):  # a run that has not saved yet
        with pytest.raises(checkpoint.UnreadableCheckpointError, match="no finished checkpoint"):
            checkpoint.load_params(tmp_path / fresh)
    assert zipfile.is_zipfile(tmp_path / "good.npz")


# --- tools ------------------------------------------------------------------------------------


def test_inspect_and_convert_tools(tmp_path, capsys):
    params = random_params(tiny(image_size=(16, 24)))
    checkpoint.save_orbax_params(tmp_path / "run", params, config=config_of(image_size=(16, 24)))
    summary = "learned posemb with class slot, token classifier, 5 classes, grid 4x6"
    assert inspect_tool.main([str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "orbax checkpoint, step 0" in out and summary in out
    assert "Transformer/encoderblock_*/LayerNorm_0/scale (x2)" in out

    assert convert_tool.main([str(tmp_path / "run"), str(tmp_path / "x.npz")]) == 0
    assert convert_tool.main([str(tmp_path / "run"), str(tmp_path / "new/dir/x.npz")]) == 0
    assert_trees_equal(checkpoint.load_params(tmp_path / "new/dir/x.npz")[0], params)
    assert inspect_tool.main([str(tmp_path / "x.npz")]) == 0
    assert summary in capsys.readouterr().out  # the non-square grid travels with the config
    assert json.loads(str(np.load(tmp_path / "x.npz")["vit_jax_config"]))["model"]["image_size"]
    assert convert_tool.main([str(tmp_path / "x.npz"), str(tmp_path / "back")]) == 0
    assert_trees_equal(checkpoint.load_params(tmp_path / "back")[0], params)

    assert inspect_tool.main([str(tmp_path / "missing")]) == 2
    assert "error: checkpoint" in capsys.readouterr().err
    # Destinations that cannot take the result: one line, before the source is read.
    (tmp_path / "notes.txt").write_text("mine")
    for dst, message in (
        (tmp_path / "notes.txt", "notes.txt is a file: an Orbax checkpoint is a directory"),
        (tmp_path / "back", "back already holds files: name a new (or empty) directory"),
        (tmp_path / "new", "new already holds files"),
        (tmp_path / "notes.txt" / "x.npz", "notes.txt is a file, not a directory"),
        *[("/proc/x.npz", "/proc takes no new files")] * os.path.isdir("/proc"),  # Linux
    ):
        assert convert_tool.main([str(tmp_path / "missing"), str(dst)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert (tmp_path / "notes.txt").read_text() == "mine"
    (tmp_path / "dir.npz").mkdir()
    assert convert_tool.main([str(tmp_path / "run"), str(tmp_path / "dir.npz")]) == 2
    assert "dir.npz is a directory" in capsys.readouterr().err
    # A reader that stops early (`| head`) gets no BrokenPipeError traceback.
    reader = subprocess.Popen(
        [sys.executable, "-m", "vit_jax.tools.inspect", str(tmp_path / "run")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    reader.stdout.close()  # gone before anything is written
    assert reader.wait(timeout=120) == 0
    assert "Traceback" not in reader.stderr.read().decode()
    (tmp_path / "empty").mkdir()  # an empty directory takes it; an .npz file is replaced
    assert convert_tool.main([str(tmp_path / "x.npz"), str(tmp_path / "empty")]) == 0
    assert convert_tool.main([str(tmp_path / "back"), str(tmp_path / "x.npz")]) == 0


def test_official_sizes_are_described_by_their_zoo_name():
    model = models.create("B/16", num_classes=1000, image_size=224)
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    assert architecture.infer(shapes, {}).summary() == (
        "B/16, learned posemb with class slot, token classifier, 1000 classes, grid 14x14"
    )


# --- cross-checks with timm (optional) --------------------------------------------------------


def timm_model(timm, model, **kw):
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=model.num_classes,
        img_size=model.image_size,
        patch_size=model.patch_size,
        embed_dim=model.hidden_size,
        depth=model.num_layers,
        num_heads=model.num_heads,
        mlp_ratio=model.mlp_dim / model.hidden_size,
        act_layer="gelu_tanh",
        **kw,
    ).eval()


def timm_logits(torch, tmodel, model, seed=0):
    x = np.random.default_rng(seed).uniform(-1, 1, (2, *model.image_size, 3)).astype(np.float32)
    with torch.no_grad():
        return tmodel(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()


def test_timm_loads_our_export_and_gives_our_logits(tmp_path):
    timm = pytest.importorskip("timm", reason=TIMM_REASON)
    import torch

    model = tiny()
    params = random_params(model)
    checkpoint.export_npz(tmp_path / "ours.npz", params, config=config_of())  # extra key: ignored
    tmodel = timm_model(timm, model)
    tmodel.load_pretrained(str(tmp_path / "ours.npz"))
    np.testing.assert_allclose(
        timm_logits(torch, tmodel, model), logits(model, params), atol=1e-4, rtol=1e-4
    )
    # At another resolution timm resizes with bilinear, no antialiasing: so do we, if asked.
    big = tiny(image_size=(32, 24))
    tbig = timm_model(timm, big)
    tbig.load_pretrained(str(tmp_path / "ours.npz"))
    restored, _ = checkpoint.restore_into(
        tmp_path / "ours.npz", big, jax.random.key(0), method="linear", antialias=False
    )
    np.testing.assert_allclose(
        timm_logits(torch, tbig, big), logits(big, restored), atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize("old,new", [((4, 4), (7, 7)), ((7, 7), (4, 4)), ((4, 4), (5, 7))])
@pytest.mark.parametrize(
    "interpolation,antialias,method",
    [
        ("bicubic", True, "cubic"),
        ("bicubic", False, "cubic-pytorch"),
        ("bilinear", False, "linear"),
    ],
)
def test_resize_posemb_matches_timm(old, new, interpolation, antialias, method):
    pytest.importorskip("timm", reason=TIMM_REASON)
    import torch
    from timm.layers import resample_abs_pos_embed

    pe = normal((1, 1 + old[0] * old[1], 8))
    theirs = resample_abs_pos_embed(
        torch.from_numpy(pe),
        list(new),
        list(old),
        num_prefix_tokens=1,
        interpolation=interpolation,
        antialias=antialias,
    ).numpy()
    ours = checkpoint.resize_posemb(
        pe, new, num_prefix_tokens=1, old_grid=old, method=method, antialias=antialias
    )
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
