"""vit_jax: Vision Transformers in JAX/Flax (see README.md; models: `vit_jax.models`; a model
with the parameters of a checkpoint, by name, URL or path: `vit_jax.pretrained(...)`)."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `vit_jax.pretrained` is imported on first use: `import vit_jax.models` stays free of the
    # checkpoint code (Orbax).
    if name == "pretrained":
        from vit_jax.checkpoint.pretrained import pretrained

        return pretrained
    raise AttributeError(f"module 'vit_jax' has no attribute {name!r}")
