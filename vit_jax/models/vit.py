"""The Vision Transformer (Dosovitskiy et al. 2021) with every patch/position-embedding variant.

    images [B, H, W, C] in [-1, 1]
      -> PatchEmbed "embedding"                         [B, h, w, D] -> tokens [B, N, D]
      -> class token "cls" prepended (classifier="token") [B, 1 + N, D]
      -> Encoder "Transformer": additive posemb "posembed_input", dropout,
         pre-LN blocks "encoderblock_{i}" (or one scanned "encoderblock"), "encoder_norm"
      -> pooling (token | gap | map | unpooled) -> optional "pre_logits" (Dense + tanh)
      -> zero-initialised "head"                          logits [B, K] ([B, N, K] if unpooled)

Parameter names match the official ViT checkpoints (including the pre-Linen block names
LayerNorm_0 / MultiHeadDotProductAttention_1 / LayerNorm_2 / MlpBlock_3), so published `.npz`
files map one to one onto the default model.

Inspection: apply with `mutable=["intermediates"]` to get every layer's `attention_weights`,
`attention_logits` [B, heads, N, N] and output `tokens` [B, N, D] (see models/inspect.py).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import posemb as posemb_lib
from vit_jax.models import rope
from vit_jax.models.attention import Attention
from vit_jax.models.patch_embed import PATCH_EMBEDS, PatchEmbed

ATTENTION_POSEMBS = ("relative", *rope.ROPE_POSEMBS)
# Every single variant; an additive and an attention one may also be joined: "learned+rope_axial".
POSEMBS = (*posemb_lib.ADDITIVE_POSEMBS, *ATTENTION_POSEMBS)
CLASSIFIERS = ("token", "gap", "map", "unpooled")
ACTIVATIONS = {
    "gelu_tanh": functools.partial(nn.gelu, approximate=True),
    "gelu": functools.partial(nn.gelu, approximate=False),
}
REMAT_POLICIES = {
    "none": None,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}


def split_posemb(posemb: str) -> tuple[str, str | None]:
    """'learned+rope_axial' -> ('learned', 'rope_axial'); 'relative' -> ('none', 'relative').

    A position embedding is at most one additive variant plus at most one attention-level variant.
    """
    additive, attention = "none", None
    for part in posemb.split("+"):
        if part in posemb_lib.ADDITIVE_POSEMBS and additive == "none" and part != "none":
            additive = part
        elif part in ATTENTION_POSEMBS and attention is None:
            attention = part
        elif part != "none" or "+" in posemb:
            raise ValueError(
                f"posemb={posemb!r} is not a valid position embedding: use one of "
                f"{posemb_lib.ADDITIVE_POSEMBS + ATTENTION_POSEMBS}, or one additive and one "
                f"attention variant joined by '+', e.g. 'learned+rope_axial'."
            )
    return additive, attention


def drop_path(x: jax.Array, rate, rng: jax.Array) -> jax.Array:
    """Stochastic depth: zeroes the residual branch x [B, ...] per example with prob. `rate`."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0).astype(x.dtype)


class MlpBlock(nn.Module):
    """Dense(mlp_dim) -> activation -> dropout -> Dense(D) -> dropout: [B, N, D] -> [B, N, D]."""

    mlp_dim: int
    activation: str = "gelu_tanh"
    dropout_rate: float = 0.0
    deterministic: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = functools.partial(
            nn.Dense,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(stddev=1e-6),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        y = dense(self.mlp_dim)(x)
        y = ACTIVATIONS[self.activation](y)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=self.deterministic)
        y = dense(x.shape[-1])(y)
        return nn.Dropout(self.dropout_rate)(y, deterministic=self.deterministic)


class EncoderBlock(nn.Module):
    """Pre-LN block: x + Attn(LN(x)), then x + MLP(LN(x)), each branch with stochastic depth.

    Called as block(x, drop_path_rate) -> (x, None) so that nn.scan can stack it.
    """

    num_heads: int
    mlp_dim: int
    position: str | None
    grid: tuple[int, int]
    num_prefix: int
    rope_theta: float
    activation: str
    dropout_rate: float
    attention_dropout_rate: float
    layernorm_epsilon: float
    deterministic: bool
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array, drop_path_rate) -> tuple[jax.Array, None]:
        norm = functools.partial(
            nn.LayerNorm,
            epsilon=self.layernorm_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        y = norm(name="LayerNorm_0")(x)
        y = Attention(
            num_heads=self.num_heads,
            position=self.position,
            grid=self.grid,
            num_prefix=self.num_prefix,
            rope_theta=self.rope_theta,
            dropout_rate=self.attention_dropout_rate,
            deterministic=self.deterministic,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="MultiHeadDotProductAttention_1",
        )(y)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=self.deterministic)
        x = x + self._drop_path(y, drop_path_rate)
        y = norm(name="LayerNorm_2")(x)
        y = MlpBlock(
            mlp_dim=self.mlp_dim,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            deterministic=self.deterministic,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="MlpBlock_3",
        )(y)
        x = x + self._drop_path(y, drop_path_rate)
        self.sow("intermediates", "tokens", x)
        return x, None

    def _drop_path(self, y: jax.Array, rate) -> jax.Array:
        if self.deterministic or (isinstance(rate, float) and rate == 0.0):
            return y
        return drop_path(y, rate, self.make_rng("dropout"))


class MAPHead(nn.Module):
    """Multihead attention pooling (big_vision): a learned probe attends over the tokens.

    [B, N, D] -> [B, D].
    """

    num_heads: int
    mlp_dim: int
    activation: str
    layernorm_epsilon: float
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        probe = self.param(
            "probe", nn.initializers.xavier_uniform(), (1, 1, x.shape[-1]), self.param_dtype
        )
        probe = jnp.broadcast_to(probe.astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        x = Attention(
            num_heads=self.num_heads,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="MultiHeadDotProductAttention_0",
        )(probe, x)
        y = nn.LayerNorm(
            epsilon=self.layernorm_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="LayerNorm_0",
        )(x)
        x = x + MlpBlock(
            mlp_dim=self.mlp_dim,
            activation=self.activation,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="MlpBlock_0",
        )(y)
        return x[:, 0]


class VisionTransformer(nn.Module):
    """ViT classifier: images [B, H, W, C] in [-1, 1] -> logits [B, num_classes].

    Build it with `vit_jax.models.create("B/16", num_classes=..., image_size=...)`; every field
    below can be overridden there. Invalid combinations raise ValueError at construction.

    Attributes:
      num_classes: classes of the head; 0 returns the pooled features [B, D] instead of logits.
      image_size: (H, W) of the input; the patch grid is (H / ph, W / pw).
      patch_size: (ph, pw).
      hidden_size, num_layers, num_heads, mlp_dim: encoder dimensions (see models/zoo.py).
      patch_embed: "conv" (strided conv) or "linear" (reshape + dense); same parameters.
      posemb: "none", "learned", "sincos1d", "sincos2d", "factorized", "relative",
        "rope_axial", "rope_mixed", or an additive and an attention one joined by "+".
      posemb_cls_slot: learned embedding has a row for the class token (official layout).
      posemb_factorized: "concat" or "sum" for the factorized variant.
      posemb_temperature: T of the sinusoidal variants.
      rope_theta: θ of the rotary variants (rope-vit uses 100 axial, 10 mixed; EVA-02 10000).
      classifier: "token", "gap" (mean of tokens), "map" (attention pooling) or "unpooled"
        (per-token logits [B, N, K]).
      representation_size: if set, a Dense + tanh "pre_logits" layer of that width.
      dropout_rate, attention_dropout_rate: dropout probabilities (train only).
      stochastic_depth: drop-path rate of the last block; it rises linearly from 0 at block 0.
      activation: "gelu_tanh" (official ViT, big_vision) or "gelu" (exact, timm/HF).
      layernorm_epsilon: 1e-6 as in the official ViT.
      head_bias_init: initial value of the head bias (the head kernel starts at zero).
      scan: run the blocks under nn.scan (one stacked "encoderblock"), with remat.
      remat_policy: checkpoint policy under scan, see REMAT_POLICIES ("none" turns remat off).
      dtype: compute dtype (e.g. "bfloat16"); param_dtype: storage dtype of parameters.
    """

    num_classes: int
    image_size: tuple[int, int]
    patch_size: tuple[int, int]
    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    patch_embed: str = "conv"
    posemb: str = "learned"
    posemb_cls_slot: bool = True
    posemb_factorized: str = "concat"
    posemb_temperature: float = 10_000.0
    rope_theta: float = 100.0
    classifier: str = "token"
    representation_size: int | None = None
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    stochastic_depth: float = 0.0
    activation: str = "gelu_tanh"
    layernorm_epsilon: float = 1e-6
    head_bias_init: float = 0.0
    scan: bool = False
    remat_policy: str = "nothing_saveable"
    dtype: str | jnp.dtype = "float32"
    param_dtype: str | jnp.dtype = "float32"

    def __post_init__(self):
        # Accept an int for square images and patches, as create() does.
        object.__setattr__(self, "image_size", as_pair(self.image_size, "image_size"))
        object.__setattr__(self, "patch_size", as_pair(self.patch_size, "patch_size"))
        validate(self)
        super().__post_init__()

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (h, w)."""
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @property
    def num_prefix(self) -> int:
        """Number of tokens before the patch tokens: 1 with a class token, else 0."""
        return 1 if self.classifier == "token" else 0

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        if tuple(images.shape[1:3]) != tuple(self.image_size):
            raise ValueError(
                f"images of size {tuple(images.shape[1:3])} given to a model built for "
                f"image_size={tuple(self.image_size)}: resize the images, or create the model "
                "with the new image_size and restore its checkpoint with init_from (which resizes "
                "the position embeddings)."
            )
        dtype, param_dtype = jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)
        x = PatchEmbed(
            hidden_size=self.hidden_size,
            patch_size=self.patch_size,
            kind=self.patch_embed,
            dtype=dtype,
            param_dtype=param_dtype,
            name="embedding",
        )(images)
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        if self.classifier == "token":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, d), param_dtype)
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x], axis=1)

        additive, attention = split_posemb(self.posemb)
        x = Encoder(
            num_layers=self.num_layers,
            posemb=additive,
            posemb_cls_slot=self.posemb_cls_slot,
            posemb_factorized=self.posemb_factorized,
            posemb_temperature=self.posemb_temperature,
            stochastic_depth=self.stochastic_depth,
            scan=self.scan,
            remat_policy=self.remat_policy,
            block=dict(
                num_heads=self.num_heads,
                mlp_dim=self.mlp_dim,
                position=attention,
                grid=self.grid,
                num_prefix=self.num_prefix,
                rope_theta=self.rope_theta,
                activation=self.activation,
                dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                layernorm_epsilon=self.layernorm_epsilon,
                deterministic=not train,
                dtype=dtype,
                param_dtype=param_dtype,
            ),
            name="Transformer",
        )(x)

        if self.classifier == "token":
            x = x[:, 0]
        elif self.classifier == "gap":
            x = jnp.mean(x, axis=1)
        elif self.classifier == "map":
            x = MAPHead(
                num_heads=self.num_heads,
                mlp_dim=self.mlp_dim,
                activation=self.activation,
                layernorm_epsilon=self.layernorm_epsilon,
                dtype=dtype,
                param_dtype=param_dtype,
                name="MAPHead_0",
            )(x)
        if self.representation_size is not None:
            x = nn.Dense(
                self.representation_size, dtype=dtype, param_dtype=param_dtype, name="pre_logits"
            )(x)
            x = jnp.tanh(x)
        if self.num_classes:
            x = nn.Dense(
                self.num_classes,
                kernel_init=nn.initializers.zeros,
                bias_init=nn.initializers.constant(self.head_bias_init),
                dtype=dtype,
                param_dtype=param_dtype,
                name="head",
            )(x)
        return x.astype(jnp.float32)


class Encoder(nn.Module):
    """Additive position embedding, dropout, the blocks and the final norm: [B, N, D] -> same.

    `block` holds the EncoderBlock fields shared by all blocks (see VisionTransformer).
    """

    num_layers: int
    posemb: str
    block: dict
    posemb_cls_slot: bool = True
    posemb_factorized: str = "concat"
    posemb_temperature: float = 10_000.0
    stochastic_depth: float = 0.0
    scan: bool = False
    remat_policy: str = "nothing_saveable"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        blk = self.block
        if self.posemb != "none":
            x = posemb_lib.AddPositionEmbedding(
                kind=self.posemb,
                grid=blk["grid"],
                num_prefix=blk["num_prefix"],
                cls_slot=self.posemb_cls_slot,
                factorized_mode=self.posemb_factorized,
                temperature=self.posemb_temperature,
                param_dtype=blk["param_dtype"],
                name="posembed_input",
            )(x)
        x = nn.Dropout(blk["dropout_rate"])(x, deterministic=blk["deterministic"])

        rates = drop_path_rates(self.stochastic_depth, self.num_layers)
        if self.scan:
            block = EncoderBlock
            if self.remat_policy != "none":
                block = nn.remat(block, prevent_cse=False, policy=REMAT_POLICIES[self.remat_policy])
            x, _ = nn.scan(
                block,
                variable_axes={"params": 0, "intermediates": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=0,
                length=self.num_layers,
            )(name="encoderblock", **blk)(x, jnp.asarray(rates, jnp.float32))
        else:
            for i, rate in enumerate(rates):
                x, _ = EncoderBlock(name=f"encoderblock_{i}", **blk)(x, float(rate))
        return nn.LayerNorm(
            epsilon=blk["layernorm_epsilon"],
            dtype=blk["dtype"],
            param_dtype=blk["param_dtype"],
            name="encoder_norm",
        )(x)


def drop_path_rates(max_rate: float, num_layers: int) -> np.ndarray:
    """Per-block stochastic-depth rates rising linearly from 0 to max_rate: [num_layers]."""
    return (
        np.linspace(0.0, max_rate, num_layers) if num_layers > 1 else np.full(num_layers, max_rate)
    )


FIELDS = tuple(
    f.name for f in dataclasses.fields(VisionTransformer) if f.name not in ("parent", "name")
)


def _choice(field: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{field}={value!r} is unknown; use one of {tuple(choices)}.")


def validate(m: VisionTransformer) -> None:
    """Raises one ValueError naming the field, its value and what would work."""
    for field in ("hidden_size", "num_layers", "num_heads", "mlp_dim"):
        if getattr(m, field) < 1:
            raise ValueError(f"{field}={getattr(m, field)} must be a positive integer.")
    (ih, iw), (ph, pw) = m.image_size, m.patch_size
    if ih % ph or iw % pw:
        raise ValueError(
            f"image_size={tuple(m.image_size)} is not divisible by "
            f"patch_size={tuple(m.patch_size)}: use a multiple of the patch, e.g. "
            f"{(max(1, round(ih / ph)) * ph, max(1, round(iw / pw)) * pw)}."
        )
    if m.hidden_size % m.num_heads:
        raise ValueError(
            f"hidden_size={m.hidden_size} is not divisible by num_heads={m.num_heads}: "
            "pick a number of heads that divides the width."
        )
    _choice("patch_embed", m.patch_embed, PATCH_EMBEDS)
    _choice("classifier", m.classifier, CLASSIFIERS)
    _choice("activation", m.activation, ACTIVATIONS)
    _choice("remat_policy", m.remat_policy, REMAT_POLICIES)
    for field in ("dtype", "param_dtype"):
        try:
            jnp.dtype(getattr(m, field))
        except TypeError:
            raise ValueError(
                f"{field}={getattr(m, field)!r} is not a dtype; use e.g. 'float32' or 'bfloat16'."
            ) from None
    additive, attention = split_posemb(m.posemb)
    posemb_lib.check_additive(additive, m.hidden_size, m.posemb_factorized)
    head_dim = m.hidden_size // m.num_heads
    if attention in rope.ROPE_POSEMBS and head_dim % 4:
        raise ValueError(
            f"posemb={m.posemb!r} rotates x and y in halves of channel pairs, so the head "
            f"dimension hidden_size / num_heads must be divisible by 4; got "
            f"{m.hidden_size} / {m.num_heads} = {head_dim}. Change num_heads or hidden_size."
        )
    if not 0.0 <= m.stochastic_depth < 1.0:
        raise ValueError(f"stochastic_depth={m.stochastic_depth} must be in [0, 1).")
    if m.num_classes < 0:
        raise ValueError(f"num_classes={m.num_classes} must be >= 0 (0: no head).")


def as_pair(value: int | tuple[int, int] | list[int], field: str) -> tuple[int, int]:
    """An int or a 2-sequence -> (rows, cols)."""
    if isinstance(value, int):
        return (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{field}={value!r} must be an int or a pair (rows, cols).")
    return pair


def create(
    variant: str,
    *,
    num_classes: int,
    image_size: int | tuple[int, int],
    **overrides,
) -> VisionTransformer:
    """Builds a ViT from a zoo string: `create("B/16", num_classes=1000, image_size=224)`.

    `overrides` set any VisionTransformer field (posemb=, classifier=, patch_embed=, dtype=,
    scan=, num_layers=, ...); the defaults give the official ViT, whose checkpoints map one to one.
    """
    from vit_jax.models.zoo import decode_variant

    unknown = [k for k in overrides if k not in FIELDS]
    if unknown:
        hints = {k: difflib.get_close_matches(k, FIELDS, n=1) for k in unknown}
        hint = "; ".join(
            f"{k!r}" + (f" (did you mean {v[0]!r}?)" if v else "") for k, v in hints.items()
        )
        raise ValueError(f"unknown model field {hint}. Valid fields: {', '.join(FIELDS)}.")
    fields = decode_variant(variant)
    fields.update(overrides)
    fields["image_size"] = as_pair(image_size, "image_size")
    fields["patch_size"] = as_pair(fields["patch_size"], "patch_size")
    return VisionTransformer(num_classes=num_classes, **fields)


def build(config) -> VisionTransformer:
    """Builds the model a config describes: a mapping with `variant`, `num_classes`, `image_size`
    and any model field (typically `config.model` of an ml_collections config). Fields set to
    None take the variant's value (e.g. hidden_size)."""
    fields = {k: v for k, v in dict(config).items() if v is not None or k == "representation_size"}
    try:
        variant = fields.pop("variant")
        num_classes = fields.pop("num_classes")
        image_size = fields.pop("image_size")
    except KeyError as e:
        raise ValueError(
            f"model config is missing {e.args[0]!r}; it needs variant, num_classes and image_size."
        ) from None
    return create(variant, num_classes=num_classes, image_size=image_size, **fields)
