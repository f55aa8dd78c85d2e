"""Checkpoints: Orbax for training runs, `.npz` in the official ViT layout for exchange, and the
adaptation of stored parameters to a model of another resolution, patch size or head.

    params, report = restore_into("workdir/checkpoints", model, rng)   # or a step dir, or .npz
    params, meta = load_params("ViT-B_16.npz")                         # as stored, numpy
    export_npz("model.npz", params, config={"model": config.model.to_dict()})
    resize_posemb(posemb, (24, 24), num_prefix_tokens=1)               # [1, 1 + 14*14, D] -> ...
"""

from vit_jax.checkpoint.adapt import adapt_params
from vit_jax.checkpoint.errors import CheckpointMismatchError, UnreadableCheckpointError
from vit_jax.checkpoint.npz import export_npz
from vit_jax.checkpoint.orbax_params import save_orbax_params
from vit_jax.checkpoint.report import Report
from vit_jax.checkpoint.restore import checkpoint_shapes, load_params, restore_into
from vit_jax.models.posemb import resize_posemb

__all__ = [
    "CheckpointMismatchError",
    "Report",
    "UnreadableCheckpointError",
    "adapt_params",
    "checkpoint_shapes",
    "export_npz",
    "load_params",
    "resize_posemb",
    "restore_into",
    "save_orbax_params",
]
