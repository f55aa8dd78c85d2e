"""Pictures (vit_jax/viz.py): the data behind each one, checked against the model and exact
formulas, and the PNG files the drawing functions and a training run write."""

import json
import math
import os
import re
import sys
import types

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from tests.conftest import SMALL, random_params
from vit_jax import models, viz
from vit_jax.models import paths, posemb
from vit_jax.models.posemb import relative, rope
from vit_jax.train import loop, parallel


def small(posemb="learned", image_size=(16, 12), **kw):
    """A SMALL model on a 4x3 patch grid (non-square, so rows and columns cannot be swapped)."""
    return models.create("Ti/4", num_classes=5, image_size=image_size, posemb=posemb, **SMALL, **kw)


def offsets_of(grid):
    """(dy, dx) indices into a [2h-1, 2w-1] offset grid for every (query, key) pair: [n, n]."""
    h, w = grid
    ys, xs = np.divmod(np.arange(h * w), w)
    return ys[None, :] - ys[:, None] + h - 1, xs[None, :] - xs[:, None] + w - 1


# --- position-embedding tables and their similarity ------------------------------------------


@pytest.mark.parametrize(
    "name, fields",
    [
        ("learned", {}),
        ("learned", {"posemb_cls_slot": False}),
        ("learned", {"classifier": "gap"}),
        ("learned+rope_axial", {"scan": True}),
        ("sincos1d", {}),
        ("sincos2d", {"posemb_temperature": 100.0}),
        ("factorized", {}),
        ("factorized", {"posemb_factorized": "sum"}),
    ],
)
def test_posemb_table_is_what_the_model_adds_to_the_patch_tokens(name, fields):
    model = small(name, **fields)
    params = random_params(model)
    table = viz.posemb_table(model, params)
    (h, w), d = model.grid, model.hidden_size
    stored = params["Transformer"].get("posembed_input", {})
    if name.startswith("learned"):
        rows = model.num_prefix_tokens if model.posemb_cls_slot else 0
        expected = stored["pos_embedding"][0, rows:]
    elif name == "sincos1d":
        expected = posemb.sincos1d(h * w, d)
    elif name == "sincos2d":
        expected = posemb.sincos2d((h, w), d, temperature=100.0)
    else:
        row, col = stored["row_embedding"], stored["col_embedding"]
        expected = posemb.factorized_table(row, col, model.posemb_factorized)
    assert table.shape == (h * w, d)
    np.testing.assert_allclose(table, expected, rtol=1e-6, atol=1e-7)


def test_posemb_table_at_initialisation_and_errors():
    fixed = small("sincos2d")
    np.testing.assert_array_equal(viz.posemb_table(fixed), viz.posemb_table(fixed, {}))
    a, b = (viz.posemb_table(small(), rng=jax.random.key(s)) for s in (0, 1))
    assert a.shape == (12, 32) and 0.01 < a.std() < 0.03  # N(0, 0.02²) as initialised
    assert not np.allclose(a, b)
    with pytest.raises(ValueError, match="adds no table.*logits_by_offset"):
        viz.posemb_table(small("relative"), {})
    with pytest.raises(ValueError, match="no Transformer/posembed_input"):
        viz.posemb_table(small("learned"), {"embedding": {}})


def test_a_learned_embedding_is_most_similar_to_itself():
    model = small()
    maps = viz.similarity_maps(viz.posemb_table(model, random_params(model)), model.grid)
    h, w = model.grid
    assert maps.shape == (h, w, h, w)
    for y in range(h):
        for x in range(w):
            assert np.unravel_index(maps[y, x].argmax(), (h, w)) == (y, x)
            assert maps[y, x, y, x] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(maps, maps.transpose(2, 3, 0, 1), atol=1e-6)  # symmetric
    assert maps.min() >= -1 - 1e-6 and maps.max() <= 1 + 1e-6


def test_sincos2d_similarity_depends_only_on_the_offset():
    model = small("sincos2d", image_size=(20, 16))  # 5x4 grid
    h, w = model.grid
    flat = viz.similarity_maps(viz.posemb_table(model), model.grid).reshape(h * w, h * w)
    dy, dx = offsets_of(model.grid)
    by_offset = viz.by_offset(flat, model.grid)
    np.testing.assert_allclose(by_offset[dy, dx], flat, atol=1e-6)
    np.testing.assert_allclose(by_offset, by_offset[::-1, ::-1], atol=1e-6)  # cos is even


def test_by_offset_places_each_pair_at_key_minus_query():
    grid = (2, 3)
    ys, xs = np.divmod(np.arange(6), 3)
    values = 10.0 * (ys[None, :] - ys[:, None]) + (xs[None, :] - xs[:, None])  # [q, k]
    expected = 10.0 * np.arange(-1, 2)[:, None] + np.arange(-2, 3)[None, :]
    np.testing.assert_array_equal(viz.by_offset(values, grid), expected)
    stacked = viz.by_offset(np.stack([values, 2 * values]), grid)
    np.testing.assert_array_equal(stacked, np.stack([expected, 2 * expected]))
    with pytest.raises(ValueError, match=r"\[..., 6, 6\]"):
        viz.by_offset(values[:5], grid)


# --- attention variants by offset ------------------------------------------------------------


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_relative_bias_by_offset_is_each_layers_table(classifier):
    model = small("relative", classifier=classifier)
    params = random_params(model)
    (h, w), heads = model.grid, model.num_heads
    for layer in range(model.num_layers):
        scope = params["Transformer"][f"encoderblock_{layer}"]["MultiHeadDotProductAttention_1"]
        table = scope[relative.PARAM][: (2 * h - 1) * (2 * w - 1)]
        # The table is indexed by query minus key; by_offset is key minus query.
        expected = table.reshape(2 * h - 1, 2 * w - 1, heads)[::-1, ::-1].transpose(2, 0, 1)
        got = viz.logits_by_offset(model, params, layer)
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    scanned = small("relative", classifier=classifier, scan=True)
    np.testing.assert_allclose(
        viz.logits_by_offset(scanned, models.scan_params(params), 1),
        viz.logits_by_offset(model, params, 1),
    )


def test_rope_axial_logit_by_offset_is_the_sum_of_its_rotations():
    model = small("rope_axial")
    got = viz.logits_by_offset(model)  # nothing stored
    (h, w), head_dim = model.grid, model.hidden_size // model.num_heads
    freqs = model.rope_theta ** (-4.0 * np.arange(head_dim // 4) / head_dim)
    dy = np.arange(-(h - 1), h)[:, None, None]
    dx = np.arange(-(w - 1), w)[None, :, None]
    # q = k = ones: each channel pair contributes 2 cos(its angle difference).
    expected = 2 * (np.cos(dx * freqs).sum(-1) + np.cos(dy * freqs).sum(-1)) / math.sqrt(head_dim)
    for head in got:
        np.testing.assert_allclose(head, expected, rtol=1e-5)
    assert got[0, h - 1, w - 1] == pytest.approx(math.sqrt(head_dim), rel=1e-5)  # the peak
    assert got[0].argmax() == (h - 1) * (2 * w - 1) + (w - 1)


def test_rope_mixed_logit_by_offset_uses_each_layers_learned_frequencies():
    model = small("rope_mixed")
    params = random_params(model)
    freqs = params["Transformer"]["encoderblock_1"]["MultiHeadDotProductAttention_1"][
        rope.FREQUENCIES
    ]
    got = viz.logits_by_offset(model, params, layer=1)
    (h, w), head_dim = model.grid, model.hidden_size // model.num_heads
    dy = np.arange(-(h - 1), h)[:, None, None]
    dx = np.arange(-(w - 1), w)[None, :, None]
    for head in range(model.num_heads):
        angles = dx * freqs[0, head] + dy * freqs[1, head]  # [2h-1, 2w-1, d/2]
        expected = 2 * np.cos(angles).sum(-1) / math.sqrt(head_dim)
        np.testing.assert_allclose(got[head], expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(got[0], got[1])  # a direction per head


@pytest.mark.parametrize("name", ["rope_axial", "rope_mixed", "relative"])
def test_in_the_model_an_attention_variant_depends_only_on_the_offset(name):
    """The real model's first-layer logits between patches of a constant image (identical
    tokens) are a function of the 2D offset only: what logits_by_offset draws."""
    model = small(name, classifier="gap")
    params = random_params(model)
    constant = jnp.full((1, *model.image_size, 3), 0.3)
    logits = models.inspect(model, {"params": params}, constant)["attention_logits"][0, 0]
    dy, dx = offsets_of(model.grid)
    np.testing.assert_allclose(viz.by_offset(logits, model.grid)[:, dy, dx], logits, atol=1e-4)
    if name == "relative":  # equal content: the logits are the bias plus one constant
        bias = viz.logits_by_offset(model, params)
        shift = viz.by_offset(logits, model.grid) - bias
        np.testing.assert_allclose(shift, shift[:, :1, :1] * np.ones_like(shift), atol=1e-4)


def test_logits_by_offset_errors():
    with pytest.raises(ValueError, match="no attention variant.*posemb_table"):
        viz.logits_by_offset(small("learned"), {})
    with pytest.raises(ValueError, match="layer=2 is out of range"):
        viz.logits_by_offset(small("rope_axial"), None, layer=2)
    with pytest.raises(ValueError, match="layer=-3 is out of range"):
        viz.logits_by_offset(small("rope_axial"), None, layer=-3)
    with pytest.raises(ValueError, match="layer 0 have no rope_frequencies"):
        viz.logits_by_offset(small("rope_mixed"), random_params(small("rope_axial")))
    model = small("rope_mixed")
    params = random_params(model)
    with pytest.raises(ValueError, match=r"pass variables\['params'\], not the variables"):
        viz.logits_by_offset(model, {"params": params})
    with pytest.raises(ValueError, match=r"pass variables\['params'\], not the variables"):
        viz.posemb_table(small("learned"), {"params": random_params(small("learned"))})
    last = viz.logits_by_offset(model, params, layer=model.num_layers - 1)
    np.testing.assert_array_equal(viz.logits_by_offset(model, params, layer=-1), last)
    assert not np.array_equal(viz.logits_by_offset(model, params, layer=0), last)


# --- attention maps and rollout --------------------------------------------------------------


def softmax_weights(shape, seed=0):
    logits = np.random.default_rng(seed).standard_normal(shape)
    return np.asarray(jax.nn.softmax(logits, axis=-1))


def test_attention_to_patches_reads_the_class_token_or_averages_the_queries():
    with_cls = softmax_weights((2, 1 + 12, 1 + 12))
    got = viz.attention_to_patches(with_cls, (4, 3), 1)
    np.testing.assert_allclose(got, with_cls[:, 0, 1:].reshape(2, 4, 3), rtol=1e-6)
    without = softmax_weights((2, 12, 12))
    got = viz.attention_to_patches(without, (4, 3), 0)
    np.testing.assert_allclose(got.sum((-1, -2)), 1.0, rtol=1e-5)  # each query's mass, averaged
    np.testing.assert_allclose(got[1, 2, 1], without[1, :, 7].mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="N = 1 \\+ 4\\*3"):
        viz.attention_to_patches(without, (4, 3), 1)


def test_rollout_rows_sum_to_one_and_it_composes_layer_by_layer():
    weights = softmax_weights((3, 2, 4, 7, 7))  # [layers, B, heads, N, N]
    rolled = viz.rollout(weights)
    assert rolled.shape == (2, 7, 7)
    np.testing.assert_allclose(rolled.sum(-1), 1.0, rtol=1e-6)
    one = [viz.rollout(weights[i : i + 1]) for i in range(3)]
    np.testing.assert_allclose(one[0], (weights[0].mean(1) + np.eye(7)) / 2, rtol=1e-6)
    np.testing.assert_allclose(rolled, one[2] @ one[1] @ one[0], rtol=1e-5)  # last layer left
    identity = np.broadcast_to(np.eye(7), (3, 2, 4, 7, 7))
    np.testing.assert_allclose(viz.rollout(identity), np.broadcast_to(np.eye(7), (2, 7, 7)))


# --- patch-embedding filters -----------------------------------------------------------------


def test_filter_components_are_orthonormal_directions_of_the_filters_variance():
    kernel = np.random.default_rng(0).standard_normal((4, 4, 3, 64))
    components, explained = viz.filter_components(kernel, num_components=48)
    assert components.shape == (48, 4, 4, 3)  # capped at the 48 pixels of a filter
    flat = components.reshape(48, -1).astype(np.float64)
    np.testing.assert_allclose(flat @ flat.T, np.eye(48), atol=1e-5)
    assert np.all(np.diff(explained) <= 1e-7) and explained.sum() == pytest.approx(1.0, rel=1e-5)
    filters = kernel.reshape(48, 64).T
    centred = filters - filters.mean(0)
    np.testing.assert_allclose(centred @ flat.T @ flat, centred, atol=1e-4)  # a complete basis
    largest = np.take_along_axis(flat, np.abs(flat).argmax(1)[:, None], 1)
    assert np.all(largest > 0)  # the sign convention


def test_filter_components_find_a_planted_direction():
    rng = np.random.default_rng(1)
    direction = rng.standard_normal(16)
    mean = rng.standard_normal(16)
    filters = mean + rng.standard_normal((32, 1)) * direction  # 32 filters of 4x4x1
    kernel = filters.T.reshape(4, 4, 1, 32)
    components, explained = viz.filter_components(kernel, num_components=3)
    unit = direction / np.linalg.norm(direction)
    assert abs(float(components[0].reshape(-1) @ unit)) == pytest.approx(1.0, abs=1e-5)
    assert explained[0] == pytest.approx(1.0, abs=1e-6)


# --- training curves -------------------------------------------------------------------------


def test_read_curves_reads_metrics_by_split_in_step_order(tmp_path):
    records = [
        {"step": 2, "loss": 1.5, "accuracy": 0.5, "learning_rate": 0.1},
        {"step": 1, "loss": "nan", "accuracy": 0.25, "learning_rate": 0.05},
        {"step": 2, "split": "eval", "accuracy": 0.75, "loss": 0.5, "num_examples": 9},
    ]
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
        f.write('{"step": 3, "loss"')  # torn by a kill
    curves = viz.read_curves(str(tmp_path))
    assert sorted(curves) == ["eval", "train"]
    np.testing.assert_array_equal(curves["train"]["step"], [1, 2])
    np.testing.assert_array_equal(curves["train"]["loss"], [np.nan, 1.5])
    np.testing.assert_array_equal(curves["eval"]["accuracy"], [0.75])
    with pytest.raises(FileNotFoundError, match="train a run in"):
        viz.read_curves(str(tmp_path / "nothing"))


# --- drawing ---------------------------------------------------------------------------------


def png_shape(path) -> tuple[int, ...]:
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path).shape


# Panels of each position embedding's figure: a table's similarity maps, one logit map per
# head for an attention variant whose heads differ (one for rope_axial, whose heads agree).
PANELS = {
    "learned": 1,
    "sincos1d": 1,
    "sincos2d": 1,
    "factorized": 1,
    "relative": 4,
    "rope_axial": 1,
    "rope_mixed": 4,
    "sincos2d+relative": 5,
}


def test_every_position_embedding_has_a_figure():
    assert set(PANELS) >= set(models.POSEMBS) - {"none"}


@pytest.mark.parametrize("name", PANELS)
def test_posemb_figure_is_written_as_a_png(name, tmp_path):
    model = small(name)
    fig = viz.posemb_figure(model, random_params(model))
    panels = PANELS[name]
    assert len(fig.axes) == 2 * panels  # every panel has its colorbar
    path = viz.save(fig, str(tmp_path / "sub" / f"{name}.png"))
    height, width, _ = png_shape(path)
    assert (width, height) == (450 * panels, 400)  # 4.5 x 4 inches per panel at 100 dpi
    assert os.listdir(tmp_path / "sub") == [f"{name}.png"]


def test_drawings_show_their_data():
    fig = viz.figure(9, 3)
    axes = fig.subplots(1, 3)
    maps = viz.similarity_maps(np.random.default_rng(0).standard_normal((6, 8)), (2, 3))
    image = viz.draw_similarity(axes[0], maps)
    np.testing.assert_array_equal(image.get_array().filled(np.nan), viz.tile(maps))
    assert viz.tile(maps).shape == (2 * 2 + 1, 3 * 3 + 2)  # 2x3 maps of 2x3, 1-pixel gaps
    values = np.arange(15.0).reshape(3, 5)
    image = viz.draw_offsets(axes[1], values)
    np.testing.assert_array_equal(image.get_array(), values)
    assert image.get_extent() == [-2.5, 2.5, 1.5, -1.5]  # centred on offset (0, 0)
    attention = np.arange(6.0).reshape(2, 3)
    image = viz.draw_attention(axes[2], np.zeros((8, 12, 1)), attention, "t")
    np.testing.assert_array_equal(image.get_array(), attention)
    assert image.get_extent() == [0, 12, 8, 0]  # each patch over its 4x4 pixels
    assert axes[2].get_title() == "t"
    # Arrays of another rank (all heads, a batch) are refused with what to pass.
    for draw, message in (
        (lambda: viz.draw_similarity(axes[0], maps[0]), "maps [h, w, h, w]"),
        (lambda: viz.draw_offsets(axes[1], values[None]), "logits_by_offset(...)[head]"),
        (lambda: viz.draw_attention(axes[2], np.zeros((8, 12, 1)), attention[None]), ".mean(0)"),
        (lambda: viz.draw_attention(axes[2], np.zeros((1, 8, 12, 1)), attention), "images[i]"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            draw()


def test_curves_figure_of_a_run(tmp_path):
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for step in (1, 2, 3):
            f.write(json.dumps({"step": step, "loss": 3.0 / step, "accuracy": 0.2 * step}) + "\n")
        f.write(json.dumps({"step": 3, "split": "eval", "loss": 1.2, "accuracy": 0.7}) + "\n")
    fig = viz.curves_figure(str(tmp_path))
    loss_axes = fig.axes[0]
    train, evaluation = loss_axes.get_lines()
    np.testing.assert_array_equal(train.get_ydata(), [3.0, 1.5, 1.0])
    np.testing.assert_array_equal(evaluation.get_xydata(), [[3, 1.2]])
    assert png_shape(viz.save(fig, str(tmp_path / "c.png")))[:2] == (360, 1000)


def test_a_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    fig = viz.figure(2, 2)

    def broken(path, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        viz.save(fig, str(tmp_path / "p.png"))
    assert os.listdir(tmp_path) == []


def test_without_matplotlib_the_data_works_and_drawing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    model = small()
    assert viz.similarity_maps(viz.posemb_table(model), model.grid).shape == (4, 3, 4, 3)
    with pytest.raises(ImportError, match=r"pip install 'vit_jax\[plots\]'"):
        viz.figure(2, 2)
    with pytest.raises(ImportError, match="matplotlib"):
        viz.write_run_plots("unused", model, {})


# --- what a training run draws ---------------------------------------------------------------


def fake_run(tmp_path, model, plots=True):
    """What write_plots reads of a Run, and a reporter that keeps its lines."""
    settings = types.SimpleNamespace(train=types.SimpleNamespace(plots=plots), model=model)
    run = types.SimpleNamespace(settings=settings, workdir=str(tmp_path), par=parallel.make("jit"))
    reporter = types.SimpleNamespace(lines=[])
    reporter.message = reporter.lines.append
    return run, {"params": random_params(model)}, reporter


def test_the_end_of_a_run_draws_its_curves_and_position_embedding(tmp_path):
    """(tests/test_notebooks.py checks that a real run gets there.)"""
    model = small("sincos2d+relative")
    run, state, reporter = fake_run(tmp_path, model)
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": 1, "loss": 2.0, "accuracy": 0.5}) + "\n")
    loop.write_plots(run, state, reporter)
    assert reporter.lines == ["plots: plots/curves.png, plots/posemb.png"]
    assert png_shape(tmp_path / "plots" / "posemb.png")[:2] == (400, 450 * PANELS[model.posemb])


def test_a_plot_never_fails_a_run(tmp_path, monkeypatch):
    model = small("relative")
    run, state, reporter = fake_run(tmp_path, model)
    loop.write_plots(run, state, reporter)  # no metrics.jsonl: the curves cannot be drawn
    assert reporter.lines == [
        f"plots: not drawn (FileNotFoundError: {tmp_path}/metrics.jsonl does not exist: train "
        f"a run in {str(tmp_path)!r} first.)"
    ]
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    loop.write_plots(run, state, reporter)
    assert reporter.lines[-1] == (
        "plots: skipped: drawing needs matplotlib, which is not installed: pip install "
        "'vit_jax[plots]' (in a clone: pip install -e '.[plots]')."
    )
    assert not os.path.exists(tmp_path / "plots")
    off, state, reporter = fake_run(tmp_path, model, plots=False)
    loop.write_plots(off, state, reporter)
    assert reporter.lines == [] and not os.path.exists(tmp_path / "plots")


@pytest.mark.parametrize("strategy", ["jit", "pmap"])
def test_the_position_parameters_come_to_the_host_alone(strategy):
    model = small("learned+rope_mixed")
    params = random_params(model)
    par = parallel.make(strategy)
    host = loop.position_params_on_host(par, par.put_state({"params": params})["params"])
    assert sorted(paths.flatten(host)) == [
        "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/rope_frequencies",
        "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/rope_frequencies",
        "Transformer/posembed_input/pos_embedding",
    ]
    for key, value in paths.flatten(host).items():
        assert isinstance(value, np.ndarray)
        np.testing.assert_array_equal(value, paths.flatten(params)[key])
    np.testing.assert_allclose(
        viz.logits_by_offset(model, host, 1), viz.logits_by_offset(model, params, 1)
    )
