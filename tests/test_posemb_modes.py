"""Position embeddings off their trained grid: interpolate vs extrapolate (`posemb_mode`), the
reference grid (`posemb_grid`), any input size (`dynamic_image_size`) and what a checkpoint
remembers of the grid it was trained on.

Models are tiny (width 32, 1 block, mean pooling) with random parameters; all runs eagerly.
"""

import jax
import numpy as np
import pytest

from tests.conftest import SMALL, random_params, tiny_config
from vit_jax import checkpoint, models, viz
from vit_jax.models.posemb import Layout, axis_coordinates, grid_coordinates, relative
from vit_jax.train.config import validate
from vit_jax.train.loop import remember_trained_grid

# One block and mean pooling: with a class token a single block's output would not see the
# patch-to-patch attention (where a relative bias acts).
ONE_BLOCK = {**SMALL, "num_layers": 1, "classifier": "gap"}
# Every variant, in as few models as joining them allows (additive + attention).
JOINED = ["learned+relative", "sincos1d+rope_axial", "sincos2d+rope_mixed", "factorized"]


def tiny(image_size, posemb, **overrides):
    """Ti/4 (patch 4) at `image_size`, so the grid is image_size / 4."""
    return models.create(
        "Ti/4", num_classes=3, image_size=image_size, posemb=posemb, **{**ONE_BLOCK, **overrides}
    )


def images(size, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (2, *size, 3)).astype(np.float32)


def logits(model, params, size=None):
    return np.asarray(model.apply({"params": params}, images(size or model.image_size)))


@pytest.mark.parametrize("name", models.POSEMBS)
def test_the_mode_matters_only_off_the_trained_grid_where_a_variant_has_a_choice(name):
    model = tiny((8, 12), name, posemb_mode="interpolate", dynamic_image_size=True)
    params = random_params(model)
    extrapolating = model.clone(posemb_mode="extrapolate")
    np.testing.assert_array_equal(logits(model, params), logits(extrapolating, params))
    a, b = logits(model, params, (16, 20)), logits(extrapolating, params, (16, 20))
    if name in ("none", "learned", "factorized"):  # nothing, or tables that only resize
        np.testing.assert_array_equal(a, b)
    else:
        assert np.abs(a - b).max() > 1e-3


def test_interpolated_coordinates_land_on_the_trained_ones():
    trained = np.arange(5.0)
    np.testing.assert_array_equal(axis_coordinates(5, 5, "interpolate"), trained)
    twice = axis_coordinates(10, 5, "interpolate")
    np.testing.assert_allclose((twice[0::2] + twice[1::2]) / 2, trained, atol=1e-12)
    np.testing.assert_array_equal(axis_coordinates(15, 5, "interpolate")[1::3], trained)
    for mode in ("extrapolate", "auto"):
        np.testing.assert_array_equal(axis_coordinates(15, 5, mode), np.arange(15.0))
    # Each axis against its own reference length: x over 3 columns, y over 2 rows.
    x, y = grid_coordinates((6, 9), (2, 3), "interpolate")
    np.testing.assert_array_equal(x.reshape(6, 9)[1::3, 1::3], [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(y.reshape(6, 9)[1::3, 1::3], [[0, 0, 0], [1, 1, 1]])


def test_sincos2d_interpolated_at_three_times_the_grid_repeats_the_trained_table():
    trained = viz.posemb_table(tiny((8, 12), "sincos2d")).reshape(2, 3, -1)
    big = tiny((24, 36), "sincos2d", posemb_grid=(2, 3), posemb_mode="interpolate")
    table = viz.posemb_table(big).reshape(6, 9, -1)
    np.testing.assert_allclose(table[1::3, 1::3], trained, atol=1e-6)
    extrapolated = viz.posemb_table(big.clone(posemb_mode="extrapolate")).reshape(6, 9, -1)
    np.testing.assert_array_equal(extrapolated[:2, :3], trained)  # integer cells of the new grid


def test_sincos1d_interpolates_its_flat_index():
    trained = viz.posemb_table(tiny((8, 12), "sincos1d"))  # 6 positions
    big = tiny((8, 36), "sincos1d", posemb_grid=(2, 3), posemb_mode="interpolate")  # 18
    np.testing.assert_allclose(viz.posemb_table(big)[1::3], trained, atol=1e-6)


def trained_bias(table, grid, dy, dx):
    """The bias [..., heads] a relative table of `grid` gives offsets dy, dx [...] (Swin index)."""
    h, w = grid
    return np.asarray(table)[(dy + h - 1) * (2 * w - 1) + dx + w - 1]


def test_relative_extrapolation_keeps_trained_offsets_and_clamps_farther_ones():
    old, new, heads = (2, 3), (4, 5), 2
    table = np.random.default_rng(0).standard_normal((3 * 5 + 3, heads)).astype(np.float32)
    grown = relative.extrapolate_bias_table(table, old, new, num_prefix_tokens=1)
    bias = np.asarray(grown)[relative.relative_position_index(new, 1)][1:, 1:]  # patch pairs
    y, x = np.divmod(np.arange(4 * 5), 5)
    dy, dx = y[:, None] - y[None, :], x[:, None] - x[None, :]  # [N, N] offsets of the new grid
    nearest = trained_bias(table, old, np.clip(dy, -1, 1), np.clip(dx, -2, 2))
    np.testing.assert_array_equal(bias, nearest)
    inside = (abs(dy) <= 1) & (abs(dx) <= 2)
    np.testing.assert_array_equal(bias[inside], trained_bias(table, old, dy[inside], dx[inside]))
    np.testing.assert_array_equal(grown[-3:], table[-3:])  # class-token rows kept
    # Smaller: the centre crop of the offset grid (back to the trained table from the grown one).
    offsets = np.asarray(grown[:-3]).reshape(7, 9, heads)
    cropped = relative.extrapolate_bias_table(grown, new, (3, 4), num_prefix_tokens=1)
    np.testing.assert_array_equal(cropped[:-3], offsets[1:6, 1:8].reshape(-1, heads))
    shrunk = relative.extrapolate_bias_table(grown, new, old, num_prefix_tokens=1)
    np.testing.assert_array_equal(shrunk, table)
    # The rule (restore, dynamic_image_size) routes by mode: "auto" still resizes.
    layouts = Layout(old, 1), Layout(new, 1)
    by_mode = {
        mode: relative.RULE.resize(table, *layouts, method="cubic", antialias=True, mode=mode)
        for mode in ("auto", "extrapolate")
    }
    np.testing.assert_array_equal(by_mode["extrapolate"], grown)
    resized = relative.resize_bias_table(table, old, new, num_prefix_tokens=1)
    np.testing.assert_array_equal(by_mode["auto"], resized)


@pytest.mark.parametrize("mode", ["interpolate", "extrapolate"])
@pytest.mark.parametrize("name", JOINED)
def test_dynamic_image_size_equals_a_restore_at_that_size(name, mode):
    fields = {"posemb_mode": mode, "classifier": "token", "num_layers": 2}  # class-token rows
    model = tiny((12, 12), name, dynamic_image_size=True, **fields)  # grid 3x3
    params = random_params(model)
    size = (8, 16)  # grid 2x4: fewer rows, more columns
    at_size = tiny(size, name, posemb_grid=model.grid, **fields)
    restored, _ = checkpoint.adapt_params(params, at_size, jax.random.key(0))
    np.testing.assert_allclose(
        logits(model, params, size), logits(at_size, restored), rtol=1e-5, atol=1e-5
    )


def test_other_sizes_need_dynamic_image_size_and_whole_patches():
    model = tiny((8, 8), "learned")
    params = random_params(model)
    with pytest.raises(ValueError, match="dynamic_image_size=True"):
        logits(model, params, (12, 8))
    with pytest.raises(ValueError, match="not whole patches"):
        logits(model.clone(dynamic_image_size=True), params, (12, 10))
    with pytest.raises(ValueError, match="posemb_mode='sideways' is unknown"):
        tiny((8, 8), "learned", posemb_mode="sideways")


def config_of(image_size, posemb):
    """The {"model": ...} entry a run of `tiny(image_size, posemb)` stores with a checkpoint."""
    fields = {"variant": "Ti/4", "num_classes": 3, "image_size": image_size, "posemb": posemb}
    return {"model": {**fields, **ONE_BLOCK}}


def test_a_restore_at_twice_the_grid_depends_on_the_mode_and_remembers_the_grid(tmp_path):
    trained = tiny((8, 12), "sincos2d")
    path = tmp_path / "trained.npz"
    checkpoint.export_npz(path, random_params(trained), config=config_of((8, 12), "sincos2d"))
    assert checkpoint.trained_grid(path) == (2, 3)
    big = checkpoint.with_trained_grid(tiny((16, 24), "sincos2d"), path)
    assert big.posemb_grid == (2, 3)
    assert checkpoint.with_trained_grid(trained, path) is trained  # already its grid
    outputs = {}
    for mode in ("interpolate", "extrapolate"):
        model = big.clone(posemb_mode=mode)
        restored, _ = checkpoint.restore_into(path, model, jax.random.key(0), verbose=False)
        outputs[mode] = logits(model, restored)
    assert np.abs(outputs["interpolate"] - outputs["extrapolate"]).max() > 1e-3


def test_a_restore_that_cannot_interpolate_for_the_model_says_how_to(tmp_path, capsys):
    """sincos and RoPE store nothing to resize: an interpolating model that does not know the
    trained grid would use its own integer positions; the report says how to give it."""
    path = tmp_path / "trained.npz"
    trained = tiny((8, 12), "learned+rope_axial")
    config = config_of((8, 12), "learned+rope_axial")
    checkpoint.export_npz(path, random_params(trained), config=config)
    plain = tiny((16, 24), "learned+rope_axial", posemb_mode="interpolate")
    _, report = checkpoint.restore_into(path, plain, jax.random.key(0))
    note = (
        "note: rope_axial is computed from patch positions, which posemb_mode='interpolate' "
        "scales to the grid it was trained on (2x3), but model.posemb_grid is unset, so this "
        "4x6 model will use its own integer positions: build it with posemb_grid=(2, 3), e.g. "
        "vit_jax.checkpoint.with_trained_grid(model, path)."
    )
    assert capsys.readouterr().out.rstrip().endswith(note) and len(report.notes) == 1
    quiet = [  # told the grid; no interpolation asked; its own grid; nothing computed
        checkpoint.with_trained_grid(plain, path),
        plain.clone(posemb_mode="extrapolate"),
        tiny((8, 12), "learned+rope_axial", posemb_mode="interpolate"),
        tiny((16, 24), "learned+relative", posemb_mode="interpolate"),
    ]
    for model in quiet[:3]:
        assert not checkpoint.restore_into(path, model, jax.random.key(0))[1].notes
    other = tmp_path / "relative.npz"
    checkpoint.export_npz(
        other, random_params(tiny((8, 12), "learned+relative")),
        config=config_of((8, 12), "learned+relative"),
    )  # fmt: skip
    assert not checkpoint.restore_into(other, quiet[3], jax.random.key(0))[1].notes
    assert "note:" not in capsys.readouterr().out
    # pretrained() and predict build the model at a new size knowing the trained grid.
    model, params = checkpoint.pretrained(
        path, image_size=(16, 24), posemb_mode="interpolate", verbose=False
    )
    assert model.posemb_grid == (2, 3) and model.grid == (4, 6)
    told = checkpoint.with_trained_grid(plain, path)
    expected, _ = checkpoint.restore_into(path, told, jax.random.key(0), verbose=False)
    np.testing.assert_array_equal(logits(model, params), logits(told, expected))
    assert checkpoint.open_checkpoint(path).model().posemb_grid is None  # its own grid


def test_a_parameter_free_position_embedding_swapped_on_restore_is_noted(tmp_path):
    path = tmp_path / "rope.npz"
    trained = tiny((8, 12), "rope_axial")
    checkpoint.export_npz(path, random_params(trained), config=config_of((8, 12), "rope_axial"))
    _, report = checkpoint.restore_into(path, tiny((8, 12), "sincos2d"), jax.random.key(0))
    assert report.notes == (
        "the checkpoint was trained with posemb='rope_axial' and this model has "
        "posemb='sincos2d': nothing stored depends on the difference, so everything loads, "
        "but the weights learned to read the other position embedding.",
    )
    assert not checkpoint.restore_into(path, trained, jax.random.key(0), verbose=False)[1].notes
    joined = tmp_path / "joined.npz"  # the same variants written in the other order: no note
    checkpoint.export_npz(
        joined, random_params(tiny((8, 12), "learned+rope_axial")),
        config=config_of((8, 12), "learned+rope_axial"),
    )  # fmt: skip
    swapped = tiny((8, 12), "rope_axial+learned")
    assert not checkpoint.restore_into(joined, swapped, jax.random.key(0), verbose=False)[1].notes
    with pytest.raises(checkpoint.CheckpointMismatchError, match="pos_embedding") as refused:
        checkpoint.restore_into(path, tiny((8, 12), "learned"), jax.random.key(0))
    # The fix names the field that differs (the sizes agree), from the checkpoint's config.
    assert "; build the model with posemb='rope_axial', or restore" in str(refused.value)


def test_a_fine_tuning_run_remembers_the_original_grid(tmp_path):
    first = tmp_path / "first.npz"  # trained at grid 2x2
    checkpoint.export_npz(
        first, random_params(tiny((8, 8), "sincos2d")), config=config_of((8, 8), "sincos2d")
    )
    fine_tuned = fine_tuning_settings(tmp_path, first, 16)
    assert fine_tuned.model.posemb_grid == (2, 2) == tuple(fine_tuned.config.model.posemb_grid)
    # Its checkpoint, at grid 4x4, says the embedding was trained at 2x2, and so on.
    second = tmp_path / "second.npz"
    config = {"model": fine_tuned.config.model.to_dict()}
    checkpoint.export_npz(second, random_params(fine_tuned.model), config=config)
    assert checkpoint.trained_grid(second) == (2, 2)
    assert fine_tuning_settings(tmp_path, second, 24).model.posemb_grid == (2, 2)


def fine_tuning_settings(tmp_path, init_from, image_size):
    """The checked settings of a run from `init_from` at `image_size`, as the loop sets up."""
    overrides = {"model.image_size": (image_size, image_size), "model.posemb": "sincos2d"}
    config = tiny_config(tmp_path, init_from=str(init_from), **overrides)
    return remember_trained_grid(validate(config))
