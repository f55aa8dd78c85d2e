"""Checkpoints: Orbax for training runs, `.npz` in the official ViT layout for exchange, Flax
msgpack files and Google's published checkpoints (by name or URL, downloaded once) in, and the
adaptation of stored parameters to a model of another resolution, patch size or head.

    model, params = pretrained("augreg:B/16-i21k", num_classes=10, image_size=384)
    params, report = restore_into("workdir/checkpoints", model, rng)   # or a step dir, .npz, URL
    params, meta = load_params("ViT-B_16.npz")                         # as stored, numpy
    export_npz("model.npz", params, config={"model": config.model.to_dict()})
    resize_posemb(posemb, (24, 24), num_prefix_tokens=1)               # [1, 1 + 14*14, D] -> ...
    model = with_trained_grid(model, "workdir/checkpoints")  # posemb_grid = the trained grid
"""

from vit_jax.checkpoint.adapt import adapt_params
from vit_jax.checkpoint.download import DownloadError
from vit_jax.checkpoint.errors import CheckpointMismatchError, UnreadableCheckpointError
from vit_jax.checkpoint.npz import export_npz
from vit_jax.checkpoint.orbax_params import save_orbax_params
from vit_jax.checkpoint.pretrained import Checkpoint, open_checkpoint, pretrained
from vit_jax.checkpoint.published import PUBLISHED
from vit_jax.checkpoint.report import Report
from vit_jax.checkpoint.restore import (
    checkpoint_shapes,
    load_params,
    locate,
    restore_into,
    trained_grid,
    with_trained_grid,
)
from vit_jax.models.posemb import resize_posemb

__all__ = [
    "PUBLISHED",
    "Checkpoint",
    "CheckpointMismatchError",
    "DownloadError",
    "Report",
    "UnreadableCheckpointError",
    "adapt_params",
    "checkpoint_shapes",
    "export_npz",
    "load_params",
    "locate",
    "open_checkpoint",
    "pretrained",
    "resize_posemb",
    "restore_into",
    "save_orbax_params",
    "trained_grid",
    "with_trained_grid",
]
