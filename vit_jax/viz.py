"""Pictures of a ViT: what its position embeddings, attention and patch filters look like, and
how its training went.

The data behind every picture comes from pure functions (arrays in, numpy arrays out; no
matplotlib), so it can be checked, printed or drawn with another library:

    posemb_table(model, params)          [h*w, D]  what the model adds to its patch tokens
    similarity_maps(table, grid)         [h, w, h, w] cosine similarity of each patch's
                                         embedding to every other (ViT paper, Figure 7 centre)
    logits_by_offset(model, params, i)   [heads, 2h-1, 2w-1] the position part of layer i's
                                         attention logit, by 2D offset (relative bias, RoPE)
    by_offset(values, grid)              [..., 2h-1, 2w-1] pairwise values by 2D offset
    attention_to_patches(weights, ...)   [..., h, w] the attention each patch gets
    rollout(weights)                     [..., N, N] attention rollout (Abnar & Zuidema 2020)
    filter_components(kernel, k)         principal components of the patch-embedding filters
                                         (ViT paper, Figure 7 left)
    read_curves(workdir)                 a run's metrics.jsonl as arrays

Drawing needs matplotlib (the `plots` extra: `pip install "vit_jax[plots]"`), imported only
when a drawing function is called. `draw_*(ax, ...)` draw onto a matplotlib Axes;
`posemb_figure` and `curves_figure` return a Figure that belongs to no pyplot state (shown as
is in a notebook), and `save` writes one as a PNG with the Agg backend. `write_run_plots` is
what training writes into its workdir at the end of a run.

    fig, ax = plt.subplots()
    viz.draw_similarity(ax, viz.similarity_maps(viz.posemb_table(model, params), model.grid))
"""

from __future__ import annotations

import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import paths
from vit_jax.models.posemb import NONE, VARIANTS, Position, split_posemb
from vit_jax.models.scan import unscan_params
from vit_jax.models.vit import AddPositionEmbedding, VisionTransformer

Grid = tuple[int, int]

# ---------------------------------------------------------------------------------------------
# Data: pure functions, numpy out.


def posemb_table(
    model: VisionTransformer, params: dict | None = None, rng: jax.Array | None = None
) -> np.ndarray:
    """The additive position embedding the model adds to its patch tokens: [h*w, D] float32,
    row-major over the patch grid.

    params: the model's parameters (at least its position embedding's); None: freshly
    initialised ones, from `rng` (default key 0). Computed by the model's own module
    (`AddPositionEmbedding` and the variant's `add`), so a generated table (sincos1d,
    sincos2d) is exactly the one the model adds, and a learned or factorized one is the table
    its parameters give. Raises ValueError for a model whose position embedding acts only
    inside attention (see `logits_by_offset`) or that has none.
    """
    additive, _ = split_posemb(model.posemb)
    if additive is NONE:
        raise ValueError(
            f"posemb={model.posemb!r} adds no table to the tokens: for an attention variant "
            "(relative, rope_*) look at its logits with logits_by_offset(model, params, layer)."
        )
    module = AddPositionEmbedding(
        posemb=additive.name, position=model.position, param_dtype=jnp.dtype(model.param_dtype)
    )
    h, w = model.grid
    tokens = jnp.zeros((1, model.num_prefix_tokens + h * w, model.hidden_size), jnp.float32)
    if params is None:
        rng = jax.random.key(0) if rng is None else rng
        added, _ = module.init_with_output(rng, tokens)
    else:
        paths.require_params(params, "posemb_table", whole=False)
        scope = params.get(paths.TRANSFORMER, {}).get(paths.POSEMB_SCOPE)
        if additive.params and scope is None:
            raise ValueError(
                f"the parameters have no {paths.TRANSFORMER}/{paths.POSEMB_SCOPE}, which a "
                f"model with posemb={model.posemb!r} stores: pass the parameters of this model."
            )
        added = module.apply({"params": scope or {}}, tokens)
    return np.asarray(added[0, model.num_prefix_tokens :], np.float32)


def similarity_maps(table: np.ndarray | jax.Array, grid: Grid) -> np.ndarray:
    """Cosine similarity of each patch's embedding to every patch's: [h, w, h, w] float32.

    table: [h*w, D], row-major over `grid` (h, w). maps[y, x] is the [h, w] map of patch
    (y, x): 1 at (y, x) itself, and high where the embedding is alike.
    """
    table = np.asarray(table, np.float64)
    h, w = grid
    if table.ndim != 2 or table.shape[0] != h * w:
        raise ValueError(
            f"table must be [h*w, D] = [{h * w}, D] for grid {grid}; got {table.shape}."
        )
    norms = np.linalg.norm(table, axis=1, keepdims=True)
    unit = table / np.maximum(norms, np.finfo(np.float64).tiny)
    return (unit @ unit.T).reshape(h, w, h, w).astype(np.float32)


def by_offset(values: np.ndarray | jax.Array, grid: Grid) -> np.ndarray:
    """Pairwise values of the patches of `grid` arranged by 2D offset.

    values: [..., h*w, h*w], entry (q, k) for query patch q and key patch k (row-major).
    Returns [..., 2h-1, 2w-1] float32: at [dy + h-1, dx + w-1] the mean over the pairs whose
    key sits dy rows below and dx columns right of the query (equal for a relative bias or
    RoPE, whose values depend on the offset only). The centre is the patch with itself.
    """
    values = np.asarray(values, np.float64)
    h, w = grid
    n = h * w
    if values.shape[-2:] != (n, n):
        raise ValueError(f"values must be [..., {n}, {n}] for grid {grid}; got {values.shape}.")
    ys, xs = np.divmod(np.arange(n), w)
    dy = (ys[None, :] - ys[:, None] + h - 1).reshape(-1)  # [q * n + k]: key minus query
    dx = (xs[None, :] - xs[:, None] + w - 1).reshape(-1)
    flat = values.reshape(*values.shape[:-2], n * n)
    sums = np.zeros((*values.shape[:-2], 2 * h - 1, 2 * w - 1))
    counts = np.zeros((2 * h - 1, 2 * w - 1))
    np.add.at(counts, (dy, dx), 1.0)
    np.add.at(np.moveaxis(sums, (-2, -1), (0, 1)), (dy, dx), np.moveaxis(flat, -1, 0))
    return (sums / counts).astype(np.float32)


class _PositionLogits(nn.Module):
    """The position part of one attention layer's logits: the layer's attention variant acting
    alone on a query and a key (rotating them, and/or adding its bias), in the scope where the
    variant's parameters live. q, k: [1, N, heads, head_dim] -> logits [heads, N, N]."""

    variant: str
    position: Position
    num_heads: int
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, q: jax.Array, k: jax.Array) -> jax.Array:
        variant = VARIANTS[self.variant]
        if variant.rotate is not None:
            q, k = variant.rotate(self, self.position, q, k)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
        if variant.bias is not None:
            logits = logits + variant.bias(self, self.position, self.num_heads)[None]
        return logits[0]


def logits_by_offset(
    model: VisionTransformer,
    params: dict | None = None,
    layer: int = 0,
    rng: jax.Array | None = None,
) -> np.ndarray:
    """The part of layer `layer`'s attention logit that position gives, by 2D offset from the
    query patch to the key patch: [heads, 2h-1, 2w-1] float32 (centre: a patch with itself).

    `relative`: the learned bias of each head. `rope_axial` / `rope_mixed`: the logit
    q·k/√d of a query and a key whose every channel is 1, rotated to their positions by the
    layer's RoPE (the same for every head with rope_axial): how attention falls off with
    distance when content is equal. Computed by the variant's own `rotate` / `bias`.
    params: the model's parameters; None: freshly initialised ones, from `rng` (default key 0).
    layer: a block index; negative counts from the last (-1), as Python indexing does.
    Raises ValueError for a model without an attention variant (see `posemb_table`).
    """
    _, attention = split_posemb(model.posemb)
    if attention is None:
        raise ValueError(
            f"posemb={model.posemb!r} has no attention variant (relative, rope_axial, "
            "rope_mixed): look at its table with posemb_table(model, params)."
        )
    if not -model.num_layers <= layer < model.num_layers:
        raise ValueError(f"layer={layer} is out of range: the model has {model.num_layers}.")
    layer %= model.num_layers  # -1: the last, as attention[-1] of `inspect`
    module = _PositionLogits(
        variant=attention.name,
        position=model.position,
        num_heads=model.num_heads,
        param_dtype=jnp.dtype(model.param_dtype),
    )
    h, w = model.grid
    prefix = model.num_prefix_tokens
    # Equal content everywhere: every channel 1 for rotary q/k; for a bias alone, nothing.
    content = 1.0 if attention.rotate is not None else 0.0
    shape = (1, prefix + h * w, model.num_heads, model.hidden_size // model.num_heads)
    qk = jnp.full(shape, content)
    if params is None:
        rng = jax.random.key(0) if rng is None else rng
        logits, _ = module.init_with_output(rng, qk, qk)
    else:
        paths.require_params(params, "logits_by_offset", whole=False)
        transformer = unscan_params(params).get(paths.TRANSFORMER, {})
        scope = transformer.get(paths.block_name(layer), {}).get(paths.BLOCK_ATTENTION, {})
        missing = [rule.name for rule in attention.params if rule.name not in scope]
        if missing:
            raise ValueError(
                f"the parameters of layer {layer} have no {missing[0]}, which a model with "
                f"posemb={model.posemb!r} stores: pass the parameters of this model."
            )
        variant_params = {rule.name: scope[rule.name] for rule in attention.params}
        logits = module.apply({"params": variant_params}, qk, qk)
    return by_offset(np.asarray(logits)[:, prefix:, prefix:], model.grid)


def attention_to_patches(
    weights: np.ndarray | jax.Array, grid: Grid, num_prefix_tokens: int
) -> np.ndarray:
    """The attention each patch receives, on the patch grid: [..., h, w] float32.

    weights: [..., N, N] attention weights (rows: queries, summing to 1; N = num_prefix_tokens
    + h*w), e.g. one layer of `models.inspect(...)["attention_weights"]` or a `rollout`.
    With a class token: its attention to each patch (what the classifier reads). Without one:
    the attention each patch receives, averaged over the queries.
    """
    weights = np.asarray(weights, np.float32)
    h, w = grid
    if weights.shape[-2:] != (num_prefix_tokens + h * w,) * 2:
        raise ValueError(
            f"weights must be [..., N, N] with N = {num_prefix_tokens} + {h}*{w}; "
            f"got {weights.shape}."
        )
    if num_prefix_tokens:
        received = weights[..., 0, num_prefix_tokens:]
    else:
        received = weights.mean(axis=-2)
    return received.reshape(*received.shape[:-1], h, w)


def rollout(weights: np.ndarray | jax.Array) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020): how much each token's final representation
    draws on each input token, through the residual connections of every layer.

    weights: [layers, ..., heads, N, N] (`models.inspect(...)["attention_weights"]`).
    Each layer's attention is averaged over heads, the identity is added (the residual path)
    and the rows renormalised to sum to 1; the layers are then multiplied, first layer on the
    right. Returns [..., N, N] float32, rows summing to 1.
    """
    weights = np.asarray(weights, np.float64)
    if weights.ndim < 4 or weights.shape[-1] != weights.shape[-2]:
        raise ValueError(f"weights must be [layers, ..., heads, N, N]; got {weights.shape}.")
    mixed = weights.mean(axis=-3) + np.eye(weights.shape[-1])
    mixed /= mixed.sum(axis=-1, keepdims=True)
    result = mixed[0]
    for layer in mixed[1:]:
        result = layer @ result
    return result.astype(np.float32)


def filter_components(
    kernel: np.ndarray | jax.Array, num_components: int = 28
) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of the patch-embedding filters (ViT paper, Figure 7 left).

    kernel: [ph, pw, C, D] (`params["embedding"]["kernel"]`): D filters of ph*pw*C pixels.
    Returns (components [k, ph, pw, C], explained [k]), k = min(num_components, D, ph*pw*C):
    orthonormal directions of largest variance of the (centred) filters, each signed so that
    its largest entry is positive, and the fraction of the variance each explains (descending).
    """
    kernel = np.asarray(kernel, np.float64)
    if kernel.ndim != 4:
        raise ValueError(f"kernel must be [ph, pw, C, D]; got {kernel.shape}.")
    ph, pw, c, d = kernel.shape
    filters = kernel.reshape(ph * pw * c, d).T  # [D, ph*pw*C]
    centred = filters - filters.mean(axis=0)
    _, singular, directions = np.linalg.svd(centred, full_matrices=False)
    k = min(num_components, *directions.shape)
    directions = directions[:k]
    largest = np.take_along_axis(directions, np.abs(directions).argmax(1)[:, None], axis=1)
    directions = directions * np.where(largest < 0, -1.0, 1.0)
    variance = singular**2
    explained = variance[:k] / max(variance.sum(), np.finfo(np.float64).tiny)
    return directions.reshape(k, ph, pw, c).astype(np.float32), explained.astype(np.float32)


def read_curves(workdir: str) -> dict[str, dict[str, np.ndarray]]:
    """A run's `metrics.jsonl` as arrays, by split: {"train": {"step", "loss", "accuracy",
    "learning_rate", ...}, "eval": {"step", "loss", "accuracy", ...}}, each [records] float64
    in step order ("nan"/"inf" strings as floats; a metric a record lacks is nan)."""
    from vit_jax.train.reporting import read_records

    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: train a run in {workdir!r} first.")
    by_split: dict[str, list[dict]] = {}
    for record in read_records(path):
        by_split.setdefault(record.get("split", "train"), []).append(record)
    curves = {}
    for split, records in by_split.items():
        records.sort(key=lambda r: r["step"])
        keys = sorted({k for r in records for k, v in r.items() if _is_number(v)})
        curves[split] = {k: np.array([float(r.get(k, "nan")) for r in records]) for k in keys}
    return curves


def _is_number(value) -> bool:
    return isinstance(value, int | float) or value in ("nan", "inf", "-inf")


# ---------------------------------------------------------------------------------------------
# Drawing: matplotlib, imported when called.


def _matplotlib():
    """The matplotlib package, or ImportError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "drawing needs matplotlib, which is not installed: pip install 'vit_jax[plots]' "
            "(in a clone: pip install -e '.[plots]')."
        ) from None
    return matplotlib


def figure(width: float, height: float):
    """A constrained-layout matplotlib Figure of width x height inches that belongs to no
    pyplot state (nothing to close; `save` writes it with the Agg backend)."""
    _matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save(fig, path: str, dpi: int = 100) -> str:
    """Writes `fig` as a PNG at `path` with the Agg backend (creating its folder), atomically:
    a failed write leaves no file behind. Returns `path`."""
    _matplotlib()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = f"{path}.tmp.png"
    try:
        fig.savefig(partial, dpi=dpi, format="png", backend="agg")  # whatever pyplot uses
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return path


def tile(images: np.ndarray, gap: int = 1, fill: float = np.nan) -> np.ndarray:
    """Lays a grid of images [rows, cols, th, tw (, C)] out as one [rows*(th+gap)-gap,
    cols*(tw+gap)-gap (, C)] image with `gap` pixels of `fill` between them."""
    rows, cols, th, tw = images.shape[:4]
    out = np.full((rows * (th + gap) - gap, cols * (tw + gap) - gap, *images.shape[4:]), fill)
    for r in range(rows):
        for c in range(cols):
            out[r * (th + gap) : r * (th + gap) + th, c * (tw + gap) : c * (tw + gap) + tw] = (
                images[r, c]
            )
    return out


def _tile_ticks(ax, count: int, size: int, gap: int, axis: str, label: str) -> None:
    """Ticks 1..count at the centres of tiles of `size` pixels along one axis of a mosaic."""
    centres = [i * (size + gap) + (size - 1) / 2 for i in range(count)]
    set_ticks, set_labels, set_label = (
        (ax.set_xticks, ax.set_xticklabels, ax.set_xlabel)
        if axis == "x"
        else (ax.set_yticks, ax.set_yticklabels, ax.set_ylabel)
    )
    set_ticks(centres)
    set_labels([str(i + 1) for i in range(count)])
    set_label(label)


def draw_similarity(ax, maps: np.ndarray, title: str | None = None):
    """Draws similarity maps [h, w, h, w] (`similarity_maps`) as the ViT paper does: the map of
    each patch at its place on the grid, with a colorbar of the cosine similarity from the
    smallest value to 1 (sinusoids are all alike on a small grid: a fixed -1..1 would hide
    their structure)."""
    maps = _with_rank(
        maps, 4, "draw_similarity", "maps [h, w, h, w] (similarity_maps(table, grid))"
    )
    h, w = maps.shape[:2]
    cmap = _matplotlib().colormaps["viridis"].with_extremes(bad="white")
    low = min(float(maps.min()), 1.0 - 1e-3)
    image = ax.imshow(tile(maps), cmap=cmap, vmin=low, vmax=1)
    _tile_ticks(ax, w, w, 1, "x", "input patch column")
    _tile_ticks(ax, h, h, 1, "y", "input patch row")
    ax.figure.colorbar(image, ax=ax, label="cosine similarity", shrink=0.8)
    if title:
        ax.set_title(title)
    return image


def draw_offsets(ax, values: np.ndarray, title: str | None = None, label: str = "logit"):
    """Draws values [2h-1, 2w-1] by 2D offset (`by_offset`, `logits_by_offset`) centred on
    offset (0, 0), with a colorbar."""
    what = "one map [2h-1, 2w-1]: one head's, logits_by_offset(...)[head], or their .mean(0)"
    values = _with_rank(values, 2, "draw_offsets", what)
    rows, cols = values.shape
    h, w = (rows + 1) // 2, (cols + 1) // 2
    extent = (-w + 0.5, w - 0.5, h - 0.5, -h + 0.5)
    image = ax.imshow(values, cmap="viridis", extent=extent)
    ax.set_xlabel("Δ column (key − query)")
    ax.set_ylabel("Δ row")
    ax.figure.colorbar(image, ax=ax, label=label, shrink=0.8)
    if title:
        ax.set_title(title)
    return image


def _with_rank(values, rank: int, caller: str, what: str) -> np.ndarray:
    """`values` as a numpy array, if it has `rank` axes; else ValueError saying what to pass."""
    values = np.asarray(values)
    if values.ndim != rank:
        raise ValueError(f"{caller} takes {what}; got an array of shape {values.shape}.")
    return values


def _for_display(image: np.ndarray) -> np.ndarray:
    """An image [H, W, C] in [-1, 1] -> [H, W] (C = 1) or [H, W, 3] in [0, 1]."""
    image = np.clip((np.asarray(image, np.float32) + 1) / 2, 0, 1)
    return image[..., 0] if image.shape[-1] == 1 else image[..., :3]


def draw_attention(ax, image: np.ndarray, attention: np.ndarray, title: str | None = None):
    """Draws an attention map [h, w] (`attention_to_patches`) over the image [H, W, C] in
    [-1, 1] it was computed on, each patch's value over its pixels, with a colorbar. A colour
    image shows through the map; a grey one (C = 1) is outlined on it (its strokes' edges)."""
    image = _with_rank(image, 3, "draw_attention", "one image [H, W, C]: images[i]")
    what = "one map [h, w]: attention_to_patches(...)[i], its heads averaged (.mean(0))"
    attention = _with_rank(attention, 2, "draw_attention", what)
    pixels = _for_display(image)
    height, width = pixels.shape[:2]
    extent = (0, width, height, 0)
    if pixels.ndim == 3:
        ax.imshow(pixels, extent=extent)
        overlay = ax.imshow(attention, cmap="inferno", alpha=0.6, extent=extent)
    else:
        overlay = ax.imshow(attention, cmap="inferno", extent=extent)
        centres_x, centres_y = np.arange(width) + 0.5, np.arange(height) + 0.5
        ax.contour(centres_x, centres_y, pixels, levels=[0.5], colors="cyan", linewidths=1.5)
    ax.figure.colorbar(overlay, ax=ax, label="attention", shrink=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return overlay


def draw_components(ax, components: np.ndarray, explained: np.ndarray | None = None):
    """Draws filter components [k, ph, pw, C] (`filter_components`) as a mosaic of small
    images, each scaled to its own range (grey for one channel, RGB for three)."""
    k, ph, pw, c = components.shape
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    low = components.min(axis=(1, 2, 3), keepdims=True)
    high = components.max(axis=(1, 2, 3), keepdims=True)
    scaled = (components - low) / np.maximum(high - low, 1e-12)
    grid = np.ones((rows * cols, ph, pw, c))
    grid[:k] = scaled
    mosaic = tile(grid.reshape(rows, cols, ph, pw, c), fill=1.0)
    ax.imshow(mosaic[..., 0] if c == 1 else mosaic[..., :3], cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    title = f"first {k} principal components of the patch filters"
    if explained is not None:
        title += f" ({100 * float(np.sum(explained)):.0f}% of the variance)"
    ax.set_title(title)


def draw_curves(axes, curves: dict[str, dict[str, np.ndarray]]) -> None:
    """Draws `read_curves` output on two Axes: the loss and the accuracy of every split against
    the step (train as a line, evaluations as points joined by a dashed line)."""
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for split, values in curves.items():
            if metric not in values:
                continue
            style = {"marker": "o", "linestyle": "--"} if split != "train" else {}
            ax.plot(values["step"], values[metric], label=split, **style)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()


def posemb_figure(model: VisionTransformer, params: dict, layer: int = 0):
    """A Figure of the model's position embedding: the similarity maps of its additive table
    and/or, for an attention variant, layer `layer`'s logits by offset (one panel per head, or
    one if the heads agree). Raises ValueError for posemb='none'."""
    additive, attention = split_posemb(model.posemb)
    if additive is NONE and attention is None:
        raise ValueError("posemb='none' has no position embedding to draw.")
    panels = []
    if additive is not NONE:
        maps = similarity_maps(posemb_table(model, params), model.grid)
        panels.append(lambda ax: draw_similarity(ax, maps, f"{additive.name}: similarity"))
    if attention is not None:
        logits = logits_by_offset(model, params, layer)
        heads = logits[:1] if np.allclose(logits, logits[:1]) else logits
        for i, head in enumerate(heads):
            name = f"{attention.name}, layer {layer}" + (f", head {i}" if len(heads) > 1 else "")
            panels.append(lambda ax, head=head, name=name: draw_offsets(ax, head, name))
    fig = figure(4.5 * len(panels), 4.0)
    for panel, ax in zip(panels, fig.subplots(1, len(panels), squeeze=False)[0], strict=True):
        panel(ax)
    return fig


def curves_figure(workdir: str):
    """A Figure of a run's training curves (loss and accuracy) from WORKDIR/metrics.jsonl."""
    curves = read_curves(workdir)
    fig = figure(10.0, 3.6)
    draw_curves(fig.subplots(1, 2), curves)
    fig.suptitle(os.path.basename(os.path.normpath(workdir)))
    return fig


def write_run_plots(workdir: str, model: VisionTransformer, params: dict) -> list[str]:
    """What a training run draws at its end, in WORKDIR/plots/: `curves.png` (loss and
    accuracy) and, for a model with a position embedding, `posemb.png` (`posemb_figure`).
    params: the model's parameters, at least its position-embedding ones. Returns the paths
    written. Raises ImportError (with the install command) without matplotlib."""
    _matplotlib()
    folder = os.path.join(workdir, "plots")
    written = [save(curves_figure(workdir), os.path.join(folder, "curves.png"))]
    if split_posemb(model.posemb) != (NONE, None):
        written.append(save(posemb_figure(model, params), os.path.join(folder, "posemb.png")))
    return written
