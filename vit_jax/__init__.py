"""vit_jax: Vision Transformers in JAX/Flax (see README.md; models: `vit_jax.models`)."""

__version__ = "0.1.0"
