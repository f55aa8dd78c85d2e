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

Image sizes: a model takes images of its `image_size`; with `dynamic_image_size=True`, of any
size of whole patches. Its parameters keep the shapes of `image_size` and each position
embedding is adapted to the input's patch grid on the fly, by the function (and `posemb_mode`)
a restore at that size applies (posemb/base.py): the logits are those of the model built for
that size, with the same `posemb_grid` (reference grid) and `posemb_mode`, restored from these
parameters.

Inspection: apply with `mutable=["intermediates"]` to get every layer's `attention_weights`,
`attention_logits` [B, heads, N, N] and output `tokens` [B, N, D] (see models/intermediates.py).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import paths, precision, zoo
from vit_jax.models import posemb as posembs
from vit_jax.models.attention import ATTENTION_IMPLS, LIBRARY_IMPLS, Attention
from vit_jax.models.patch_embed import PATCH_EMBEDS, PatchEmbed
from vit_jax.models.posemb import POSEMB_MODES, POSEMBS, VARIANTS, Position, split_posemb
from vit_jax.models.posemb.factorized import MODES as FACTORIZED_MODES
from vit_jax.options import option, options_of, out_of_range, unknown_field

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
            dot_general=precision.dot_general(self.dtype),
        )
        y = dense(self.mlp_dim)(x)
        y = ACTIVATIONS[self.activation](y)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=self.deterministic)
        y = dense(x.shape[-1])(y)
        return nn.Dropout(self.dropout_rate)(y, deterministic=self.deterministic)


@dataclasses.dataclass(frozen=True)
class BlockSettings:
    """What every encoder block shares (see VisionTransformer for the meaning of each field).

    posemb: the attention-level position embedding, or None; `position` places the patch
    tokens for it. deterministic: no dropout or stochastic depth (evaluation).
    """

    num_heads: int
    mlp_dim: int
    posemb: str | None
    position: Position
    activation: str
    dropout_rate: float
    attention_dropout_rate: float
    layernorm_epsilon: float
    deterministic: bool
    attention_impl: str
    dtype: jnp.dtype
    param_dtype: jnp.dtype


class EncoderBlock(nn.Module):
    """Pre-LN block: x + Attn(LN(x)), then x + MLP(LN(x)), each branch with stochastic depth.

    Called as block(x, drop_path_rate) -> (x, None) so that nn.scan can stack it.
    """

    settings: BlockSettings

    @nn.compact
    def __call__(self, x: jax.Array, drop_path_rate) -> tuple[jax.Array, None]:
        s = self.settings
        norm = functools.partial(
            nn.LayerNorm, epsilon=s.layernorm_epsilon, dtype=s.dtype, param_dtype=s.param_dtype
        )
        y = norm(name=paths.BLOCK_NORM_1)(x)
        y = Attention(
            num_heads=s.num_heads,
            posemb=s.posemb,
            position=s.position,
            dropout_rate=s.attention_dropout_rate,
            deterministic=s.deterministic,
            impl=s.attention_impl,
            dtype=s.dtype,
            param_dtype=s.param_dtype,
            name=paths.BLOCK_ATTENTION,
        )(y)
        y = nn.Dropout(s.dropout_rate)(y, deterministic=s.deterministic)
        x = x + self._drop_path(y, drop_path_rate)
        y = norm(name=paths.BLOCK_NORM_2)(x)
        y = MlpBlock(
            mlp_dim=s.mlp_dim,
            activation=s.activation,
            dropout_rate=s.dropout_rate,
            deterministic=s.deterministic,
            dtype=s.dtype,
            param_dtype=s.param_dtype,
            name=paths.BLOCK_MLP,
        )(y)
        x = x + self._drop_path(y, drop_path_rate)
        self.sow("intermediates", "tokens", x)
        return x, None

    def _drop_path(self, y: jax.Array, rate) -> jax.Array:
        if self.settings.deterministic or (isinstance(rate, float) and rate == 0.0):
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
    attention_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        probe = self.param(
            "probe", nn.initializers.xavier_uniform(), (1, 1, x.shape[-1]), self.param_dtype
        )
        probe = jnp.broadcast_to(probe.astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        x = Attention(
            num_heads=self.num_heads,
            impl=self.attention_impl,
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


class AddPositionEmbedding(nn.Module):
    """Adds the additive position embedding `posemb` (a name in posemb.ADDITIVE_POSEMBS) to the
    tokens [B, num_prefix_tokens + h*w, D]; named "posembed_input", where its parameters live."""

    posemb: str
    position: Position
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return VARIANTS[self.posemb].add(self, self.position, x)


class VisionTransformer(nn.Module):
    """ViT classifier: images [B, H, W, C] in [-1, 1] -> logits [B, num_classes].

    Build it with `vit_jax.models.create("B/16", num_classes=..., image_size=...)`; every field
    below can be overridden there. Invalid combinations raise ValueError at construction. Each
    field's help, allowed values and default are declared with it (`vit_jax.options`).
    `posemb`'s variants are listed in `vit_jax/models/posemb/`.
    """

    num_classes: int = option(
        help="classes of the head; 0 returns pooled features [B, D]", low=0, type=int
    )
    image_size: tuple[int, int] = option(help="(H, W) of the input images")
    patch_size: tuple[int, int] = option(help="(ph, pw); the patch grid is (H / ph, W / pw)")
    hidden_size: int = option(
        help="token width D (set by the variant, e.g. 'B/16')", low=1, type=int
    )
    num_layers: int = option(help="encoder blocks", low=1, type=int)
    num_heads: int = option(help="attention heads; must divide hidden_size", low=1, type=int)
    mlp_dim: int = option(help="hidden width of each block's MLP", low=1, type=int)
    patch_embed: str = option(
        "conv", "strided conv or reshape + dense; same parameters", choices=PATCH_EMBEDS
    )
    posemb: str = option(
        "learned",
        "position embedding: "
        + "; ".join(f"'{name}': {VARIANTS[name].doc}" for name in POSEMBS)
        + "; or an additive and an attention one joined by '+', e.g. 'learned+rope_axial'",
    )
    posemb_cls_slot: bool = option(
        True, "learned table has a class-token row (official layout; False: big_vision's)"
    )
    posemb_factorized: str = option(
        "concat", "how `factorized` joins its row and column tables", choices=FACTORIZED_MODES
    )
    posemb_temperature: float = option(
        10_000.0, "temperature T of the sinusoidal variants", low=0, low_open=True
    )
    rope_theta: float = option(
        100.0,
        "θ of both rotary variants (rope-vit used 100 for axial, 10 for mixed; EVA-02 10000)",
        low=0,
        low_open=True,
    )
    posemb_mode: str = option(
        "auto",
        "on a patch grid other than the reference grid: 'interpolate' (coordinates scaled to "
        "the reference's range, tables resized) or 'extrapolate' (integer coordinates of the "
        "new grid, relative offsets beyond the table clamped to its edge; learned tables still "
        "resize); 'auto': tables interpolate, sincos and RoPE extrapolate",
        choices=POSEMB_MODES,
    )
    posemb_grid: tuple[int, int] | None = option(
        None,
        "(h, w) the position embedding was trained on, the reference of posemb_mode; None: "
        "the model's own patch grid (an int n means (n, n))",
        type=tuple,
    )
    dynamic_image_size: bool = option(
        False,
        "accept images of any size divisible by the patch: parameters keep the shapes of "
        "image_size, position embeddings are adapted to each input's grid as a restore would",
    )
    classifier: str = option(
        "token",
        "pooling: class token, mean of tokens, attention pooling, or per-token logits",
        choices=CLASSIFIERS,
    )
    representation_size: int | None = option(
        None, "width of a Dense + tanh 'pre_logits' layer before the head", type=int, low=1
    )
    dropout_rate: float = option(
        0.0, "dropout probability (training only)", low=0, high=1, high_open=True
    )
    attention_dropout_rate: float = option(
        0.0, "dropout probability on the attention weights", low=0, high=1, high_open=True
    )
    stochastic_depth: float = option(
        0.0,
        "drop-path rate of the last block, rising linearly from 0 at block 0",
        low=0,
        high=1,
        high_open=True,
    )
    activation: str = option(
        "gelu_tanh",
        "MLP activation: tanh-approximated (official ViT) or exact GELU (timm)",
        choices=tuple(ACTIVATIONS),
    )
    layernorm_epsilon: float = option(1e-6, "LayerNorm epsilon", low=0, low_open=True)
    head_bias_init: float = option(0.0, "initial head bias (the head kernel starts at zero)")
    scan: bool = option(False, "run the blocks under nn.scan (one stacked 'encoderblock')")
    remat_policy: str = option(
        "nothing_saveable",
        "rematerialisation policy under scan ('none': no remat)",
        choices=tuple(REMAT_POLICIES),
    )
    attention_impl: str = option(
        "auto",
        "how attention is computed (same parameters and outputs): 'auto' (= 'fused'), "
        "'reference', 'fused', or jax.nn.dot_product_attention's 'xla' / 'cudnn'",
        choices=ATTENTION_IMPLS,
    )
    dtype: str = option("float32", "compute dtype: 'float32', 'bfloat16' or 'float16'")
    param_dtype: str = option("float32", "storage dtype of the parameters, e.g. 'float32'")

    def __post_init__(self):
        # Accept an int for square images and patches, as create() does.
        object.__setattr__(self, "image_size", as_pair(self.image_size, "image_size"))
        object.__setattr__(self, "patch_size", as_pair(self.patch_size, "patch_size"))
        if self.posemb_grid is not None:
            object.__setattr__(self, "posemb_grid", as_pair(self.posemb_grid, "posemb_grid"))
        for field in ("dtype", "param_dtype"):  # jnp.bfloat16 as well as "bfloat16"
            object.__setattr__(self, field, precision.dtype_name(getattr(self, field), field))
        validate(self)
        super().__post_init__()

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (h, w)."""
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @property
    def variant(self) -> str:
        """Its zoo name, "S/16" (`zoo.variant_name`), or its sizes spelled out."""
        sizes = (self.hidden_size, self.num_layers, self.num_heads, self.mlp_dim)
        return zoo.variant_name(*sizes, self.patch_size)

    @property
    def reference_grid(self) -> tuple[int, int]:
        """The grid the position embedding was trained on: posemb_grid, else the model's grid."""
        return self.posemb_grid or self.grid

    def input_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The patch grid of images of `image_size` (H, W); ValueError if the model does not
        take that size (another size without dynamic_image_size, or not whole patches)."""
        (ih, iw), (ph, pw) = tuple(image_size), self.patch_size
        if (ih, iw) == tuple(self.image_size):
            return self.grid
        if not self.dynamic_image_size:
            raise ValueError(
                f"images of size {(ih, iw)} given to a model built for "
                f"image_size={tuple(self.image_size)}: resize the images, create the model with "
                "dynamic_image_size=True (position embeddings adapted to each size on the fly), "
                "or create it with the new image_size and restore its checkpoint with init_from "
                "(which resizes the position embeddings)."
            )
        if ih % ph or iw % pw or ih < ph or iw < pw:
            raise ValueError(
                f"images of size {(ih, iw)} are not whole patches of "
                f"patch_size={tuple(self.patch_size)}: crop or resize them to a multiple, e.g. "
                f"{(max(1, ih // ph) * ph, max(1, iw // pw) * pw)}."
            )
        return (ih // ph, iw // pw)

    @property
    def num_prefix_tokens(self) -> int:
        """Number of tokens before the patch tokens: 1 with a class token, else 0."""
        return 1 if self.classifier == "token" else 0

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        check_images(images, self.image_size)
        grid = self.input_grid(images.shape[1:3])
        dtype, param_dtype = jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)
        x = PatchEmbed(
            hidden_size=self.hidden_size,
            patch_size=self.patch_size,
            patch_embed=self.patch_embed,
            dtype=dtype,
            param_dtype=param_dtype,
            name=paths.EMBEDDING,
        )(images)
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        if self.classifier == "token":
            cls = self.param(paths.CLS, nn.initializers.zeros, (1, 1, d), param_dtype)
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x], axis=1)

        additive, attention = split_posemb(self.posemb)
        x = Encoder(
            num_layers=self.num_layers,
            posemb=additive.name,
            block=self._block_settings(attention, grid, train, dtype, param_dtype),
            stochastic_depth=self.stochastic_depth,
            scan=self.scan,
            remat_policy=self.remat_policy,
            name=paths.TRANSFORMER,
        )(x)

        x = self._pool(x, dtype, param_dtype)
        return self._head(x, dtype, param_dtype).astype(jnp.float32)

    def _pool(self, x: jax.Array, dtype, param_dtype) -> jax.Array:
        """Encoder output [B, N, D] -> [B, D] by the classifier (unpooled: unchanged)."""
        if self.classifier == "token":
            return x[:, 0]
        if self.classifier == "gap":
            return jnp.mean(x, axis=1)
        if self.classifier == "map":
            return MAPHead(
                num_heads=self.num_heads,
                mlp_dim=self.mlp_dim,
                activation=self.activation,
                layernorm_epsilon=self.layernorm_epsilon,
                dtype=dtype,
                param_dtype=param_dtype,
                attention_impl=self.attention_impl,
                name=paths.MAP_HEAD,
            )(x)
        return x

    def _head(self, x: jax.Array, dtype, param_dtype) -> jax.Array:
        """Optional pre-logits (Dense + tanh), then the zero-initialised head (none if
        num_classes == 0)."""
        if self.representation_size is not None:
            x = nn.Dense(
                self.representation_size,
                dtype=dtype,
                param_dtype=param_dtype,
                dot_general=precision.dot_general(dtype),
                name=paths.PRE_LOGITS,
            )(x)
            x = jnp.tanh(x)
        if self.num_classes:
            x = nn.Dense(
                self.num_classes,
                kernel_init=nn.initializers.zeros,
                bias_init=nn.initializers.constant(self.head_bias_init),
                dtype=dtype,
                param_dtype=param_dtype,
                dot_general=precision.dot_general(dtype),
                name=paths.HEAD,
            )(x)
        return x

    @property
    def position(self) -> Position:
        """Where the patch tokens sit at the model's own grid, and the settings of the position
        embeddings."""
        return self.position_at(self.grid)

    def position_at(self, grid: tuple[int, int]) -> Position:
        """The Position of patch tokens on `grid` (the input's), with the parameters made for
        the model's grid and the reference grid and mode of its position embedding."""
        return Position(
            grid=tuple(grid),
            num_prefix_tokens=self.num_prefix_tokens,
            posemb_cls_slot=self.posemb_cls_slot,
            posemb_factorized=self.posemb_factorized,
            posemb_temperature=self.posemb_temperature,
            rope_theta=self.rope_theta,
            param_grid=self.grid,
            reference_grid=self.reference_grid,
            mode=self.posemb_mode,
        )

    def _block_settings(
        self, attention, grid: tuple[int, int], train: bool, dtype, param_dtype
    ) -> BlockSettings:
        return BlockSettings(
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            posemb=attention.name if attention is not None else None,
            position=self.position_at(grid),
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            layernorm_epsilon=self.layernorm_epsilon,
            deterministic=not train,
            attention_impl=self.attention_impl,
            dtype=dtype,
            param_dtype=param_dtype,
        )


class Encoder(nn.Module):
    """Additive position embedding, dropout, the blocks and the final norm: [B, N, D] -> same.

    posemb: the additive variant ("none": nothing is added); `block` holds what every block
    shares, its position settings included.
    """

    num_layers: int
    posemb: str
    block: BlockSettings
    stochastic_depth: float = 0.0
    scan: bool = False
    remat_policy: str = "nothing_saveable"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        blk = self.block
        check_block_layout(self, self.scan)
        if self.posemb != "none":
            x = AddPositionEmbedding(
                posemb=self.posemb,
                position=blk.position,
                param_dtype=blk.param_dtype,
                name=paths.POSEMB_SCOPE,
            )(x)
        x = nn.Dropout(blk.dropout_rate)(x, deterministic=blk.deterministic)

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
            )(settings=blk, name=paths.SCANNED_BLOCK)(x, jnp.asarray(rates, jnp.float32))
        else:
            for i, rate in enumerate(rates):
                x, _ = EncoderBlock(settings=blk, name=paths.block_name(i))(x, float(rate))
        return nn.LayerNorm(
            epsilon=blk.layernorm_epsilon,
            dtype=blk.dtype,
            param_dtype=blk.param_dtype,
            name=paths.ENCODER_NORM,
        )(x)


def check_images(images: jax.Array, image_size: tuple[int, int]) -> None:
    """Raises ValueError for input the model cannot mean: not [B, H, W, C], not floats (the
    model takes [-1, 1]), or channels first. Checked when traced, before any work."""
    shape = tuple(images.shape)
    if len(shape) != 4:
        hint = " (add a batch axis: images[None])" if len(shape) == 3 else ""
        raise ValueError(f"images of shape {shape}: the model takes [batch, H, W, C]{hint}.")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(
            f"images of dtype {images.dtype}: the model takes floats in [-1, 1], e.g. "
            "pixels.astype(np.float32) / 127.5 - 1."
        )
    if shape[1] in (1, 3) and shape[3] not in (1, 3) and shape[2:] == tuple(image_size):
        raise ValueError(
            f"images of shape {shape} look channels-first [B, C, H, W]; the model takes "
            "[B, H, W, C]: images.transpose(0, 2, 3, 1)."
        )


def check_block_layout(encoder: nn.Module, scan: bool) -> None:
    """Raises ValueError when the parameters bound to `encoder` are stacked for a scanned model
    and it is per-block, or the other way round (flax would only say a scope is missing)."""
    if not encoder.has_variable("params", paths.ENCODER_NORM):
        return  # initialising, or no parameters given
    names = encoder.variables["params"].keys()
    if scan and paths.SCANNED_BLOCK not in names and paths.block_name(0) in names:
        raise ValueError(
            "the parameters are per block (encoderblock_0, ...) but the model has scan=True: "
            "stack them with vit_jax.models.scan_params(params), or build it with scan=False."
        )
    if not scan and paths.SCANNED_BLOCK in names:
        raise ValueError(
            "the parameters are stacked for a scanned model (encoderblock) but the model has "
            "scan=False: split them with vit_jax.models.unscan_params(params), or build it "
            "with scan=True."
        )


def drop_path_rates(max_rate: float, num_layers: int) -> np.ndarray:
    """Per-block stochastic-depth rates rising linearly from 0 to max_rate: [num_layers]."""
    return (
        np.linspace(0.0, max_rate, num_layers) if num_layers > 1 else np.full(num_layers, max_rate)
    )


FIELDS = tuple(
    f.name for f in dataclasses.fields(VisionTransformer) if f.name not in ("parent", "name")
)


def validate(m: VisionTransformer) -> None:
    """Raises one ValueError naming the field, its value and what would work: each field
    against its declared option (type, choices, range), then the fields against each other."""
    for opt in options_of(VisionTransformer):
        if opt.name not in ("image_size", "patch_size"):
            opt.check(getattr(m, opt.name))
    (ih, iw), (ph, pw) = m.image_size, m.patch_size
    if min(ph, pw) < 1 or min(ih, iw) < 1:
        raise out_of_range("image_size and patch_size", (m.image_size, m.patch_size), ">= 1")
    if ih % ph or iw % pw:
        raise ValueError(
            f"image_size={tuple(m.image_size)} is not divisible by "
            f"patch_size={tuple(m.patch_size)}: use a multiple of the patch, e.g. "
            f"{(max(1, round(ih / ph)) * ph, max(1, round(iw / pw)) * pw)}."
        )
    if m.posemb_grid is not None and min(m.posemb_grid) < 1:
        raise out_of_range("posemb_grid", m.posemb_grid, ">= 1 patches on each axis")
    if m.hidden_size % m.num_heads:
        raise ValueError(
            f"hidden_size={m.hidden_size} is not divisible by num_heads={m.num_heads}: "
            "pick a number of heads that divides the width."
        )
    if m.attention_impl in LIBRARY_IMPLS and m.attention_dropout_rate > 0:
        raise ValueError(
            f"attention_impl={m.attention_impl!r} (jax.nn.dot_product_attention) has no "
            f"attention dropout, but attention_dropout_rate={m.attention_dropout_rate}: use "
            "attention_impl='auto' or 'fused', or attention_dropout_rate=0."
        )
    posembs.check(m)


def as_pair(value: int | tuple[int, int] | list[int], field: str) -> tuple[int, int]:
    """An int or a 2-sequence of ints -> (rows, cols). Anything else (a string, a float, three
    numbers) raises ValueError: nothing is parsed or rounded."""
    is_int = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if is_int(value):
        return (int(value), int(value))
    pair = () if isinstance(value, str) else tuple(value) if hasattr(value, "__iter__") else ()
    if len(pair) != 2 or not all(is_int(v) for v in pair):
        raise ValueError(f"{field}={value!r} must be an int or a pair of ints (rows, cols).")
    return (int(pair[0]), int(pair[1]))


def create(
    variant: str,
    *,
    num_classes: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    **overrides,
) -> VisionTransformer:
    """Builds a ViT from a zoo string: `create("B/16", num_classes=1000, image_size=224)`, or a
    timm model name, whose size is the default image_size: `create("vit_base_patch16_224",
    num_classes=1000)`. num_classes and image_size are required otherwise (they default to
    None only so that a timm field name given instead, img_size=, gets its own message).

    `overrides` set any VisionTransformer field (posemb=, classifier=, patch_embed=, dtype=,
    scan=, num_layers=, ...); the defaults give the official ViT, whose checkpoints map one to one.
    """
    from vit_jax.models.zoo import decode_variant

    unknown = [k for k in overrides if k not in FIELDS]
    if unknown and unknown[0] in zoo.TIMM_FIELDS:
        raise ValueError(
            f"{unknown[0]} is timm's name; here it is {zoo.TIMM_FIELDS[unknown[0]]}= (config "
            "files and the command line read timm's names too)."
        )
    if unknown:
        raise unknown_field(f"model.{unknown[0]}", FIELDS)
    if (timm := zoo.from_timm(variant)) is not None:  # "vit_base_patch16_224": B/16 at 224
        variant, image_size = timm[0], timm[1] if image_size is None else image_size
    given = {"num_classes": num_classes, "image_size": image_size}
    missing = [name for name, value in given.items() if value is None]
    if missing:
        raise ValueError(
            f"create() needs {' and '.join(f'{m}=' for m in missing)}: e.g. "
            f"create({variant!r}, num_classes=1000, image_size=224)."
        )
    fields = decode_variant(variant)
    fields.update(overrides)
    fields["image_size"] = as_pair(image_size, "image_size")
    fields["patch_size"] = as_pair(fields["patch_size"], "patch_size")
    return VisionTransformer(num_classes=num_classes, **fields)


def model_fields(model: VisionTransformer) -> dict:
    """The fields `build` makes `model` from again (what a checkpoint stores as its config's
    "model"): every field, and a `variant` naming the patch (the zoo name where it is one)."""
    fields = {
        f.name: getattr(model, f.name)
        for f in dataclasses.fields(model)
        if f.init and f.name not in ("parent", "name")
    }
    ph, pw = model.patch_size
    zoo_name = model.variant.split("/")[0] in zoo.SIZES
    fields["variant"] = model.variant if zoo_name else f"Ti/{ph}x{pw}"  # sizes given: the patch
    return fields


def build(config) -> VisionTransformer:
    """Builds the model a config describes: a mapping with `variant`, `num_classes`, `image_size`
    and any model field (typically `config.model` of an ml_collections config). Fields set to
    None take the variant's value (e.g. hidden_size)."""
    fields = {k: v for k, v in dict(config).items() if v is not None or k == "representation_size"}
    needed = {
        "variant": "a zoo size and patch, e.g. 'B/16'",
        "num_classes": "the classes of the head (0: none)",
        "image_size": "(H, W) of the input images, e.g. 224",
    }
    for name, what in needed.items():
        if name not in fields:
            raise ValueError(f"model.{name} must be set: {what}.")
    variant, num_classes, image_size = (fields.pop(name) for name in needed)
    zoo.decode_variant(variant)  # a config names a zoo variant (a timm name: one message)
    return create(variant, num_classes=num_classes, image_size=image_size, **fields)
