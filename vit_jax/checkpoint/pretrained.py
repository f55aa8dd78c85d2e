"""From a checkpoint to a model and its parameters in one call: `vit_jax.pretrained`.

    model, params = vit_jax.pretrained("augreg:B/16-i21k", num_classes=10, image_size=384)
    logits = model.apply({"params": params}, images)   # images [B, 384, 384, 3] in [-1, 1]

The source is a published name (published.py), an http(s):// or gs:// URL (downloaded once), or
a local checkpoint (a workdir, step dir, .npz or Flax msgpack file). The stored model is known
from, the first that exists: the registry entry of a published name; the config stored with the
checkpoint (this package's runs and exports); the stored shapes (`architecture.infer`: official
and big_vision files). A model at another resolution or class count is restored by
`restore_into`: position embeddings resized, a new head initialised (and the `pre_logits` layer
dropped, as the official fine-tuning does, unless `representation_size` is passed).
"""

from __future__ import annotations

import dataclasses
import os

import jax

from vit_jax import models
from vit_jax.checkpoint import architecture, layout, published
from vit_jax.checkpoint.adapt import per_block_shapes
from vit_jax.checkpoint.restore import (
    checkpoint_shapes,
    locate,
    restore_into,
    with_reference_grid,
)
from vit_jax.models.posemb import learned

# What `architecture.infer` says when no position parameter is stored.
_NO_POSEMB_PARAMS = "fixed or none"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checkpoint found by name, URL or path, and the model stored in it.

    path: the local file or directory (downloaded into the cache for a name or URL).
    meta: as from `checkpoint_shapes`.
    fields: the stored model as `models.build` fields (variant, image_size, num_classes, ...);
      `posemb` is None when the shapes cannot tell it (nothing stored: sinusoidal or none).
    channels: image channels of the model input (1: grayscale).
    class_names: label i -> name, if known: stored with the checkpoint (training runs store
      their dataset's), else those of a published checkpoint's dataset, else ImageNet-1k's for
      a 1000-class file without a stored config (every such published file is ImageNet-1k);
      ImageNet WordNet IDs are given as words.
    """

    path: str
    meta: dict
    fields: dict
    channels: int
    class_names: tuple[str, ...] | None
    trained_grid: tuple[int, int] | None = None  # see restore.trained_grid
    inferred: bool = False  # fields read from the stored shapes alone (no config, no registry)

    def inferred_note(self) -> str | None:
        """What shapes alone cannot tell, for a checkpoint whose model was inferred from them."""
        if not self.inferred or self.fields.get("posemb") is None:
            return None
        return (
            f"{self.path} stores no config: its model is inferred from the parameter shapes "
            f"(posemb={self.fields['posemb']!r}). A parameter-free position embedding used with "
            "it (sincos*, rope_axial) leaves no trace there: if the model had one, pass e.g. "
            f"posemb='{self.fields['posemb']}+rope_axial'. export_npz(path, params, model=model) "
            "stores the model with the file."
        )

    def model(
        self,
        *,
        num_classes: int | None = None,
        image_size: int | tuple[int, int] | None = None,
        **overrides,
    ) -> models.VisionTransformer:
        """The stored model, or its architecture with another class count (`pre_logits`
        dropped unless `representation_size` is given) or resolution (int or (H, W));
        `overrides` set any other field (dtype="bfloat16", ...). At another resolution the
        model's posemb_grid is the grid the embedding was trained on (unless given), so that
        posemb_mode="interpolate" scales computed positions (sincos, RoPE) to it."""
        fields = dict(self.fields)
        if num_classes is not None and num_classes != fields["num_classes"]:
            fields.update(num_classes=num_classes, representation_size=None)
        if image_size is not None:
            fields["image_size"] = image_size
        fields.update(overrides)
        if "posemb" in fields and fields["posemb"] is None:
            raise ValueError(
                f"{self.path} stores no position-embedding parameters and no config, so its "
                "model has either a fixed (sinusoidal) position embedding or none: pass "
                "posemb='sincos2d' (or 'sincos1d', 'rope_axial', 'none', ...)."
            )
        return with_reference_grid(models.build(fields), self.trained_grid)


def open_checkpoint(source: str | os.PathLike) -> Checkpoint:
    """Finds the checkpoint (downloading a name or URL once) and what model it holds; reads its
    shapes and metadata only (a msgpack file is decoded whole)."""
    path = locate(source)
    shapes, meta = checkpoint_shapes(path)
    arch = architecture.infer(per_block_shapes(shapes), meta)
    entry = published.PUBLISHED.get(os.fspath(source))
    config = meta.get("config") or {}
    if entry is not None:
        fields = entry.model_fields()
    elif architecture.stored_model(config) is not None:
        fields = dict(config["model"])
        if fields.get("num_classes") is None:
            fields["num_classes"] = arch.num_classes
    else:
        fields = _inferred_fields(arch, path)
    names = _class_names(config, entry, fields["num_classes"])
    grid = None if arch.posemb_grid is None else tuple(arch.posemb_grid)
    inferred = entry is None and architecture.stored_model(config) is None
    return Checkpoint(path, meta, fields, arch.channels, names, grid, inferred)


def pretrained(
    source: str | os.PathLike,
    *,
    num_classes: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    rng: jax.Array | None = None,
    verbose: bool = True,
    **overrides,
) -> tuple[models.VisionTransformer, dict]:
    """(model, params) of a checkpoint, at the stored or the asked class count and resolution.

    source: a published name ("augreg:B/16-i21k"), an http(s):// or gs:// URL, or a path.
    num_classes: a new head (initialised from `rng`, default key 0) when it differs.
    image_size: int or (H, W); position embeddings are resized to the new patch grid.
    overrides: other model fields (dtype="bfloat16", scan=True, representation_size=...).
    verbose: print the restore report (what was loaded, resized, re-initialised).
    """
    checkpoint = open_checkpoint(source)
    model = checkpoint.model(num_classes=num_classes, image_size=image_size, **overrides)
    if verbose and "posemb" not in overrides and (note := checkpoint.inferred_note()):
        print(f"note: {note}")
    rng = jax.random.key(0) if rng is None else rng
    params, _ = restore_into(checkpoint.path, model, rng, verbose=verbose)
    return model, params


def _inferred_fields(arch: architecture.Architecture, path: str) -> dict:
    """The `models.build` fields of a stored tree without config, from its Architecture."""
    if arch.grid is None:
        raise ValueError(
            f"cannot tell the patch grid, hence the image size, of {path} from its shapes (see "
            f"`python -m vit_jax.tools.inspect {path}`): build the model yourself and use "
            "vit_jax.checkpoint.restore_into(path, model, rng, old_grid=(rows, cols))."
        )
    (ph, pw), (gh, gw) = arch.patch_size, arch.grid
    zoo = arch.variant.split("/")[0] in models.SIZES
    return {
        "variant": arch.variant if zoo else f"Ti/{ph}x{pw}",  # sizes below, in any case
        "hidden_size": arch.hidden_size,
        "num_layers": arch.num_layers,
        "num_heads": arch.num_heads,
        "mlp_dim": arch.mlp_dim,
        "image_size": (gh * ph, gw * pw),
        "num_classes": arch.num_classes,
        "classifier": arch.classifier,
        "representation_size": arch.representation_size,
        "posemb": None if arch.posemb == _NO_POSEMB_PARAMS else arch.posemb,
        "posemb_cls_slot": arch.num_prefix_tokens.get(learned.PARAM, 1) > 0,
    }


def _class_names(
    config: dict, entry: published.Published | None, num_classes: int
) -> tuple[str, ...] | None:
    # Imported here: vit_jax.data loads tfds and grain, which checkpoint code does not need.
    from vit_jax.data import class_names

    names = config.get(layout.CLASS_NAMES)
    imagenet = entry.class_names == published.IMAGENET2012 if entry else not config
    if names is None and imagenet and num_classes == 1000:
        names = class_names.imagenet2012()
    if names is None or len(names) != num_classes:
        return None
    return class_names.readable(names)
