"""Sizes of the zoo beyond the ViT paper's (shapes only: nothing is initialised or compiled)."""

import jax
import jax.numpy as jnp

from vit_jax import models


def parameter_count(variant: str, num_classes: int, image_size: int) -> int:
    model = models.create(variant, num_classes=num_classes, image_size=image_size)
    x = jnp.zeros((1, image_size, image_size, 3))
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    return sum(leaf.size for leaf in jax.tree.leaves(shapes))


def test_vit_g14_has_the_published_parameter_count():
    # Zhai et al. 2022 (Scaling Vision Transformers): ViT-g/14, width 1408, depth 40,
    # MLP 6144, 16 heads, 1,011M parameters without the head. Per block 25,250,176
    # (attention 7,935,488, MLP 17,309,056, 2 LayerNorms 5,632); patch embedding 829,312;
    # class token 1,408; 257 position embeddings 361,856; final LayerNorm 2,816.
    assert models.decode_variant("g/14") == {
        "hidden_size": 1408,
        "num_layers": 40,
        "num_heads": 16,
        "mlp_dim": 6144,
        "patch_size": (14, 14),
    }
    count = parameter_count("g/14", num_classes=0, image_size=224)
    assert count == 40 * 25_250_176 + 829_312 + 1_408 + 361_856 + 2_816 == 1_011_202_432
    assert round(count / 1e6) == 1011
    # A 1000-class head adds 1408 x 1000 weights and 1000 biases.
    assert parameter_count("g/14", num_classes=1000, image_size=224) == count + 1_409_000
