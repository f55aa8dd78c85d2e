"""Properties of the ViT family: equivalences, invariances, formulas, parameter counts, errors."""

import itertools
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import SMALL, random_params
from vit_jax import models
from vit_jax.models import patch_embed, posemb
from vit_jax.models.posemb import relative, rope
from vit_jax.models.posemb.base import grid_coordinates

POSEMBS = [*models.POSEMBS, "learned+rope_axial", "sincos2d+relative"]


def small(image_size=(16, 24), variant="Ti/4x8", **kw):
    return models.create(variant, num_classes=5, image_size=image_size, **{**SMALL, **kw})


def images(shape, seed=0):
    return jax.random.uniform(jax.random.key(seed), shape, minval=-1.0, maxval=1.0)


def test_published_parameter_counts():
    expected = {
        "Ti/16": 5_717_416,
        "S/16": 22_050_664,
        "B/16": 86_567_656,
        "B/32": 88_224_232,
        "L/16": 304_326_632,
        "H/14": 632_045_800,
    }
    for variant, count in expected.items():
        model = models.create(variant, num_classes=1000, image_size=224)
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
        assert sum(x.size for x in jax.tree.leaves(shapes)) == count, variant


def test_default_model_uses_official_parameter_names():
    model = models.create("Ti/16", num_classes=10, image_size=32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    flat = {
        "/".join(k.key for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(shapes)
    }
    for key in [
        "embedding/kernel",
        "cls",
        "Transformer/posembed_input/pos_embedding",
        "Transformer/encoderblock_0/LayerNorm_0/scale",
        "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel",
        "Transformer/encoderblock_11/MlpBlock_3/Dense_1/bias",
        "Transformer/encoderblock_0/LayerNorm_2/bias",
        "Transformer/encoder_norm/scale",
        "head/kernel",
    ]:
        assert key in flat, key
    assert shapes["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 5, 192)
    q = shapes["Transformer"]["encoderblock_0"]["MultiHeadDotProductAttention_1"]
    assert q["query"]["kernel"].shape == (192, 3, 64)
    assert q["out"]["kernel"].shape == (3, 64, 192)


@pytest.mark.parametrize("image_size,variant", [((16, 16), "Ti/4"), ((16, 24), "Ti/8x4")])
def test_conv_and_linear_patch_embeddings_agree(image_size, variant):
    conv = small(image_size, variant, patch_embed="conv")
    linear = small(image_size, variant, patch_embed="linear")
    params = {"params": random_params(conv)}
    x = images((2, *image_size, 3))
    np.testing.assert_allclose(conv.apply(params, x), linear.apply(params, x), atol=1e-5)


def permute_patches(x, patch_size, perm):
    """Reorders the patches of images [B, H, W, C] by a permutation of the row-major grid."""
    b, h, w, c = x.shape
    ph, pw = patch_size
    p = patch_embed.patchify(x, patch_size)
    gh, gw = p.shape[1:3]
    p = p.reshape(b, gh * gw, ph, pw, c)[:, perm].reshape(b, gh, gw, ph, pw, c)
    return p.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


@pytest.mark.parametrize("name", POSEMBS)
def test_permuting_patches_changes_logits_only_with_position_information(name):
    model = small((16, 16), "Ti/4", posemb=name, classifier="gap")
    params = {"params": random_params(model)}
    x = images((2, 16, 16, 3))
    perm = np.random.default_rng(0).permutation(16)
    permuted = permute_patches(x, (4, 4), perm)
    a, b = model.apply(params, x), model.apply(params, permuted)
    if name == "none":
        np.testing.assert_allclose(a, b, atol=1e-5)
    else:
        assert np.abs(a - b).max() > 1e-3


def first_layer_logits(model, params, image_size):
    """Layer-0 attention logits [heads, N, N] of a constant image (identical patch contents)."""
    x = jnp.full((1, *image_size, 3), 0.5)
    out = models.inspect(model, params, x)
    return np.asarray(out["attention_logits"][0, 0])


@pytest.mark.parametrize("name", ["relative", "rope_axial", "rope_mixed", "learned"])
def test_attention_logit_depends_only_on_2d_offset(name):
    model = small((16, 24), "Ti/4", posemb=name, classifier="token")
    params = {"params": random_params(model)}
    logits = first_layer_logits(model, params, (16, 24))
    grid_w = 6

    def token(r, c):
        return 1 + r * grid_w + c  # class token first

    pairs = [((0, 1), (1, 3)), ((1, 2), (2, 1)), ((2, 4), (0, 4))]  # rows 0-2, cols 1-4
    shifts = [(1, 0), (0, 1), (1, -1)]
    shifted_equal = all(
        np.allclose(
            logits[:, token(*a), token(*b)],
            logits[:, token(a[0] + dr, a[1] + dc), token(b[0] + dr, b[1] + dc)],
            atol=1e-4,
        )
        for (a, b), (dr, dc) in itertools.product(pairs, shifts)
    )
    offsets_matter = not np.allclose(
        logits[:, token(0, 0), token(1, 2)], logits[:, token(0, 0), token(2, 1)], atol=1e-3
    )
    if name == "learned":  # absolute: shifting both tokens changes the logit
        assert not shifted_equal
    else:
        assert shifted_equal and offsets_matter


def test_rotation_keeps_norms_and_skips_class_token():
    x = jax.random.normal(jax.random.key(0), (2, 1 + 12, 3, 8))
    angles = rope.axial_angles(grid_coordinates((3, 4)), 8, 100.0)
    y = rope.rotate(x, jnp.asarray(angles), num_prefix_tokens=1)
    np.testing.assert_array_equal(y[:, 0], x[:, 0])
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
    # token at (0, 0) has angle 0: unchanged; others move.
    np.testing.assert_allclose(y[:, 1], x[:, 1], atol=1e-6)
    assert np.abs(y[:, 2] - x[:, 2]).max() > 1e-3


def test_rope_mixed_init_has_axial_magnitudes():
    init = rope.mixed_frequencies_init(10.0)
    f = np.asarray(init(jax.random.key(0), (2, 3, 8)))  # head_dim 16
    magnitudes = np.hypot(f[0], f[1])
    expected = 10.0 ** (-4 * np.arange(4) / 16)
    np.testing.assert_allclose(magnitudes, np.tile(expected, 2)[None].repeat(3, 0), rtol=1e-5)
    assert not np.allclose(f[:, 0], f[:, 1])  # a random direction per head


def test_sincos1d_matches_vaswani_formula():
    pe = posemb.sincos1d(50, 16)
    for p, i in [(0, 0), (3, 1), (17, 5), (49, 7)]:
        angle = p / 10_000 ** (2 * i / 16)
        assert pe[p, 2 * i] == pytest.approx(math.sin(angle), abs=1e-6)
        assert pe[p, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-6)


def test_sincos2d_matches_big_vision_formula():
    h, w, dim = 3, 5, 16
    pe = posemb.sincos2d((h, w), dim)
    quarter = dim // 4
    for y, x, k in [(0, 0, 0), (1, 4, 2), (2, 3, 3)]:
        omega = 10_000 ** (-k / (quarter - 1))
        row = pe[y * w + x]
        assert row[k] == pytest.approx(math.sin(x * omega), abs=1e-6)
        assert row[quarter + k] == pytest.approx(math.cos(x * omega), abs=1e-6)
        assert row[2 * quarter + k] == pytest.approx(math.sin(y * omega), abs=1e-6)
        assert row[3 * quarter + k] == pytest.approx(math.cos(y * omega), abs=1e-6)


def test_factorized_embeddings_are_row_and_column_tables():
    row = jnp.arange(6.0).reshape(3, 2)
    col = 10 + jnp.arange(8.0).reshape(4, 2)
    concat = posemb.factorized_table(row, col, "concat")
    np.testing.assert_array_equal(concat[1 * 4 + 2], jnp.concatenate([row[1], col[2]]))
    total = posemb.factorized_table(row, col, "sum")
    np.testing.assert_array_equal(total[2 * 4 + 3], row[2] + col[3])


def test_relative_index_is_swin_formula_with_beit_class_rows():
    h, w = 3, 4
    index = relative.relative_position_index((h, w), num_prefix_tokens=1)
    num_rel = (2 * h - 1) * (2 * w - 1)
    assert index.shape == (13, 13)
    i, j = 1 + (2 * w + 1), 1 + (0 * w + 3)  # (2, 1) and (0, 3)
    assert index[i, j] == (2 - 0 + h - 1) * (2 * w - 1) + (1 - 3 + w - 1)
    assert index[0, 5] == num_rel and index[5, 0] == num_rel + 1 and index[0, 0] == num_rel + 2
    assert index.max() + 1 == relative.num_relative_positions((h, w), 1)


@pytest.mark.parametrize("name", ["learned", "relative+learned", "rope_mixed", "factorized"])
def test_scanned_and_per_block_models_agree(name):
    name = "learned+relative" if name == "relative+learned" else name
    loop = small((16, 16), "Ti/4", posemb=name, classifier="map")
    scanned = small((16, 16), "Ti/4", posemb=name, classifier="map", scan=True)
    params = {"params": random_params(loop)}
    stacked = models.scan_params(params["params"])
    assert jax.tree.structure(stacked) == jax.tree.structure(
        jax.eval_shape(scanned.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
    )
    x = images((2, 16, 16, 3))
    np.testing.assert_allclose(
        loop.apply(params, x), scanned.apply({"params": stacked}, x), atol=1e-5, rtol=1e-5
    )
    back = models.unscan_params(stacked)
    chex.assert_trees_all_equal(back, params["params"])


def test_bfloat16_compute_stays_close_to_float32():
    f32 = small((16, 16), "Ti/4")
    bf16 = small((16, 16), "Ti/4", dtype="bfloat16")
    params = {"params": random_params(f32)}
    x = images((4, 16, 16, 3))
    a, b = f32.apply(params, x), bf16.apply(params, x)
    assert b.dtype == jnp.float32
    # Stated tolerance: relative L2 error of the logits below 3% with bf16 matmuls.
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.03
    stored = jax.eval_shape(
        small((16, 16), "Ti/4", param_dtype="bfloat16").init, jax.random.key(0), x
    )
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(stored))


@pytest.mark.parametrize("size", [(16, 16), (16, 24)], ids=["square", "non-square"])
def test_every_variant_classifier_and_patch_embed_lowers_with_the_right_output_shape(size):
    """The full product, traced and lowered by jit (XLA compiles and runs a covering subset in
    the next test; compiling all 160 would take minutes on 2 cores)."""
    grid = size[0] // 4 * (size[1] // 8)
    x = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)
    for name, classifier, kind in itertools.product(
        POSEMBS, models.CLASSIFIERS, ("conv", "linear")
    ):
        model = small(size, "Ti/4x8", posemb=name, classifier=classifier, patch_embed=kind)
        params = jax.eval_shape(model.init, jax.random.key(0), x)
        lowered = jax.jit(model.apply).lower(params, x)
        out = lowered.out_info
        expected = (2, 5) if classifier != "unpooled" else (2, grid, 5)
        assert out.shape == expected, (name, classifier, kind, size)


@pytest.mark.parametrize("index", range(len(POSEMBS)))
def test_every_variant_jit_compiles_and_differentiates(index):
    """Each posemb compiled once, with classifier, patch embed and shape rotating so that every
    classifier, both embeds and both (square, non-square) shapes are compiled across the cases."""
    name, classifier = POSEMBS[index], models.CLASSIFIERS[index % 4]
    kind, size = ("conv", "linear")[(index // 2) % 2], ((16, 16), (16, 24))[(index // 4) % 2]
    model = small(
        size,
        "Ti/4x8",
        posemb=name,
        classifier=classifier,
        patch_embed=kind,
        num_layers=1,
        dropout_rate=0.1,
        stochastic_depth=0.1,
    )
    params = {"params": random_params(model)}

    @jax.jit
    def loss(params, x):
        out = model.apply(params, x, train=True, rngs={"dropout": jax.random.key(3)})
        return jnp.mean(out**2), out

    (value, out), grads = jax.value_and_grad(loss, has_aux=True)(params, images((2, *size, 3)))
    grid = size[0] // 4 * (size[1] // 8)
    assert out.shape == ((2, 5) if classifier != "unpooled" else (2, grid, 5))
    chex.assert_tree_all_finite((value, grads))


@pytest.mark.parametrize(
    "regularizer", ["dropout_rate", "attention_dropout_rate", "stochastic_depth"]
)
def test_training_mode_regularizers_are_random_and_reproducible(regularizer):
    model = small((16, 16), "Ti/4", num_layers=3, **{regularizer: 0.5})
    params = {"params": random_params(model)}
    x = images((8, 16, 16, 3))

    def run(seed):
        return model.apply(params, x, train=True, rngs={"dropout": jax.random.key(seed)})

    np.testing.assert_array_equal(run(0), run(0))
    assert np.abs(run(0) - run(1)).max() > 1e-4
    assert np.abs(run(0) - model.apply(params, x)).max() > 1e-4
    np.testing.assert_array_equal(
        model.apply(params, x), small((16, 16), "Ti/4", num_layers=3).apply(params, x)
    )  # eval mode ignores them


def test_stochastic_depth_rates_rise_linearly():
    np.testing.assert_allclose(models.vit.drop_path_rates(0.5, 3), [0.0, 0.25, 0.5])


def test_inspect_returns_attention_maps_per_layer():
    x = images((2, 16, 16, 3))
    loop = small((16, 16), "Ti/4", num_layers=3)
    params = jax.jit(loop.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    out = models.inspect(loop, params, x)
    assert out["attention_weights"].shape == (3, 2, 4, 17, 17)
    assert out["tokens"].shape == (3, 2, 17, 32)
    np.testing.assert_allclose(out["attention_weights"].sum(-1), 1.0, rtol=1e-5)
    scanned = small((16, 16), "Ti/4", num_layers=3, scan=True)
    out_scanned = models.inspect(scanned, {"params": models.scan_params(params["params"])}, x)
    np.testing.assert_allclose(
        out_scanned["attention_weights"], out["attention_weights"], atol=1e-6
    )


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(image_size=(30, 32)), "image_size=(30, 32) is not divisible by patch_size"),
        (dict(num_heads=5), "hidden_size=32 is not divisible by num_heads=5"),
        (dict(posemb="rope_axial", hidden_size=24), "head dimension"),
        (dict(posemb="sincos2d", hidden_size=30, num_heads=3), "posemb='sincos2d'"),
        (dict(posemb="sincos1d", hidden_size=33, num_heads=3), "posemb='sincos1d'"),
        (dict(posemb="rotary"), "posemb='rotary' is not a valid position embedding"),
        (dict(posemb="learned+sincos2d"), "is not a valid position embedding"),
        (dict(posemb="none+relative"), "joins nothing; write posemb='relative'"),
        (dict(classifier="cls"), "classifier='cls' is unknown"),
        (dict(patch_embed="mlp"), "patch_embed='mlp' is unknown"),
        (dict(dtype="float33"), "dtype='float33' is not a floating-point dtype"),
        (dict(param_dtype="int32"), "param_dtype='int32' is not a floating-point dtype"),
        (dict(image_size="16"), "image_size='16' must be an int or a pair of ints"),
        (dict(image_size=(16.5, 16)), "image_size=(16.5, 16) must be an int or a pair of ints"),
        (dict(posmb="learned"), "model.posmb is not a field in model (did you mean 'posemb'?)"),
        (dict(drop_path_rate=0.1), "drop_path_rate is timm's name; here it is stochastic_depth="),
    ],
)
def test_bad_configurations_raise_one_clear_error(overrides, message):
    kwargs = {**SMALL, "image_size": (16, 16), **overrides}
    image_size = kwargs.pop("image_size")
    with pytest.raises(
        ValueError,
        match=message.replace("(", r"\(")
        .replace(")", r"\)")
        .replace("?", r"\?")
        .replace("+", r"\+"),
    ):
        models.create("Ti/4", num_classes=5, image_size=image_size, **kwargs)


def test_create_names_what_it_needs_and_reads_no_timm_name_for_it():
    with pytest.raises(ValueError, match="img_size is timm's name; here it is image_size="):
        models.create("B/16", num_classes=10, img_size=224)  # not "missing image_size"
    with pytest.raises(ValueError, match=r"create\(\) needs num_classes= and image_size=: e\.g\."):
        models.create("B/16")


def test_dtypes_may_be_given_as_jax_or_numpy_dtypes():
    """jnp.bfloat16 as Flax users write it, np.dtype objects and names: the same model."""
    for given in (jnp.bfloat16, jnp.dtype("bfloat16"), "bfloat16"):
        model = small((16, 16), "Ti/4", dtype=given, param_dtype=np.float32)
        assert (model.dtype, model.param_dtype) == ("bfloat16", "float32")
        assert model.clone(image_size=(32, 32)).dtype == "bfloat16"
    model = small((16, 16), "Ti/4", dtype=jnp.bfloat16)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype("float32")}
    logits = jax.eval_shape(model.apply, params, jnp.zeros((1, 16, 16, 3)))
    assert logits.dtype == jnp.float32  # bf16 products accumulate in float32


@pytest.mark.parametrize("variant", ["X/16", "B/", "B/0", "B16", "B/16y8"])
def test_unknown_variant_strings_raise(variant):
    with pytest.raises(ValueError, match="variant="):
        models.create(variant, num_classes=5, image_size=32)


def test_variant_strings_decode_non_square_patches():
    assert models.decode_variant("S/16x8")["patch_size"] == (16, 8)
    assert models.decode_variant("L/14")["num_layers"] == 24


def test_inputs_and_parameters_the_model_cannot_mean_are_refused_with_what_to_do():
    model = small((16, 16), "Ti/4")
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    apply = lambda m, p, x: jax.eval_shape(m.apply, p, x)
    cases = [
        (model, params, jnp.zeros((16, 16, 3)), "add a batch axis: images[None]"),
        (model, params, jnp.zeros((1, 16, 16, 3), jnp.uint8), "floats in [-1, 1]"),
        (model, params, jnp.zeros((1, 3, 16, 16)), "look channels-first"),
        (model, params, jnp.zeros((1, 16, 16, 1)), "1 channel given to parameters made for 3"),
        (model.clone(scan=True), params, jnp.zeros((1, 16, 16, 3)), "scan_params(params)"),
        (small((32, 32), "Ti/4"), params, jnp.zeros((1, 32, 32, 3)), "adapt_params(params"),
    ]
    for m, p, x, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            apply(m, p, x)
    scanned = jax.eval_shape(
        model.clone(scan=True).init, jax.random.key(0), jnp.zeros((1, 16, 16, 3))
    )
    with pytest.raises(ValueError, match=re.escape("unscan_params(params)")):
        apply(model, scanned, jnp.zeros((1, 16, 16, 3)))


def test_input_of_another_size_is_refused_with_a_hint():
    model = small((16, 16), "Ti/4")
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match="init_from"):
        jax.eval_shape(model.apply, params, jnp.zeros((1, 32, 32, 3)))


def test_build_from_config_mapping():
    model = models.build({"variant": "Ti/4", "num_classes": 3, "image_size": 16, **SMALL})
    assert model.grid == (4, 4) and model.hidden_size == 32
    with pytest.raises(ValueError, match="model.variant must be set"):
        models.build({"num_classes": 3, "image_size": 16})
