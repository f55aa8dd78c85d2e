"""Pure train and eval steps. They know nothing of devices, files or logging.

`train_step(state, batch) -> (state, metrics)` and `eval_step(params, batch) -> sums` are
made by `make_train_step` / `make_eval_step` from the model, the optimizer and the training
options. Under pmap the caller passes `axis_name`, and gradients and metrics are averaged across
devices; under jit over a mesh XLA inserts the same all-reduce on its own.

Batches: {"image": float32 [B, H, W, C] in [-1, 1], "label": int32 [B]} (+ "mask" [B] at eval).
A model with classifier="unpooled" (logits [B, N, K], one per patch) trains on per-pixel labels
int32 [B, H, W] instead: each patch's target is the share of its pixels of each class
(`patch_targets`), its accuracy is judged against the class of most of its pixels.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


def per_patch(model: nn.Module) -> bool:
    """Whether `model` predicts a class per patch (classifier="unpooled": logits [B, N, K]),
    and so trains on per-pixel labels [B, H, W]."""
    return model.classifier == "unpooled"


def check_batch(batch: dict, dense_labels: bool = False) -> None:
    """Checks a batch's shapes when the step is traced (free at run time): "image" [B, H, W, C],
    "label" [B] (`dense_labels`: [B, H, W], a class per pixel) and any "mask" [B]."""
    chex.assert_rank(batch["image"], 4)
    b, h, w = batch["image"].shape[:3]
    chex.assert_shape(batch["label"], (b, h, w) if dense_labels else (b,))
    chex.assert_shape([v for k, v in batch.items() if k not in ("image", "label")], (b,))


def smooth(targets: jax.Array, label_smoothing: float) -> jax.Array:
    """Label smoothing of targets [..., K]: mixed with the uniform distribution."""
    return targets * (1.0 - label_smoothing) + label_smoothing / targets.shape[-1]


def soft_targets(labels: jax.Array, num_classes: int, label_smoothing: float) -> jax.Array:
    """int labels [B] -> smoothed one-hot targets [B, K]."""
    return smooth(jax.nn.one_hot(labels, num_classes), label_smoothing)


def patch_targets(label_map: jax.Array, patch_size: tuple[int, int], num_classes: int) -> jax.Array:
    """Per-pixel classes int [B, H, W] -> each patch's class shares [B, N, K]: the fraction of
    its (ph x pw) pixels of each class. N = (H / ph) (W / pw) patches in row-major order, the
    order of the model's patch tokens."""
    b, h, w = label_map.shape
    ph, pw = patch_size
    onehot = jax.nn.one_hot(label_map, num_classes)
    shares = onehot.reshape(b, h // ph, ph, w // pw, pw, num_classes).mean(axis=(2, 4))
    return shares.reshape(b, (h // ph) * (w // pw), num_classes)


def targets_and_classes(
    labels: jax.Array, model: nn.Module, label_smoothing: float
) -> tuple[jax.Array, jax.Array]:
    """What the loss and the accuracy compare the logits with: labels [B] -> smoothed one-hot
    targets [B, K] and the labels; per-pixel labels [B, H, W] (a per-patch model) -> smoothed
    `patch_targets` [B, N, K] and each patch's majority class [B, N] (ties: the lower class)."""
    if not per_patch(model):
        return soft_targets(labels, model.num_classes, label_smoothing), labels
    shares = patch_targets(labels, model.patch_size, model.num_classes)
    return smooth(shares, label_smoothing), jnp.argmax(shares, -1)


def confusion_matrix(
    classes: jax.Array, predictions: jax.Array, weights: jax.Array, num_classes: int
) -> jax.Array:
    """[K, K] sums of `weights` of the predictions (any shape, with `classes` and `weights`
    alike): row = true class, column = predicted class."""
    true = jax.nn.one_hot(classes, num_classes) * weights[..., None]
    return jnp.einsum("...k,...l->kl", true, jax.nn.one_hot(predictions, num_classes))


def mean_iou(confusion: np.ndarray) -> float:
    """Mean intersection over union of a confusion matrix [K, K] (rows: true, columns:
    predicted), over the classes present (in the labels or the predictions); 0 if none is."""
    confusion = np.asarray(confusion, np.float64)
    intersection = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    return float(np.mean(intersection[present] / union[present])) if present.any() else 0.0


def mixup(images: jax.Array, targets: jax.Array, rng: jax.Array, alpha: float):
    """Mixes each example with its neighbour in the batch (big_vision's roll), one λ ~ Beta(α, α)
    per batch. Returns mixed images [B, H, W, C] and targets [B, K] (or per patch [B, N, K])."""
    lam = jax.random.beta(rng, alpha, alpha)
    lam = jnp.maximum(lam, 1.0 - lam)  # the original image stays the dominant one
    mix = lambda x: lam * x + (1.0 - lam) * jnp.roll(x, 1, axis=0)
    return mix(images), mix(targets)


def accumulated_grads(grad_fn, params, batch: dict, rng: jax.Array, steps: int):
    """Mean loss, accuracy and gradients over `steps` equal micro-batches of `batch`.

    grad_fn(params, images, labels, rng) -> ((loss, accuracy), grads). Micro-batch k takes rows
    k, k + steps, k + 2 steps, ...: each device's contiguous shard of the batch splits into its
    own micro-batches, so no rows move between devices. Micro-batch k draws its randomness from
    fold_in(rng, k).
    """
    if steps == 1:
        (loss, accuracy), grads = grad_fn(params, batch["image"], batch["label"], rng)
        return loss, accuracy, grads
    micro = jax.tree.map(
        lambda x: x.reshape(x.shape[0] // steps, steps, *x.shape[1:]).swapaxes(0, 1), batch
    )

    def body(carry, inputs):
        index, mb = inputs
        (loss, accuracy), grads = grad_fn(
            params, mb["image"], mb["label"], jax.random.fold_in(rng, index)
        )
        return jax.tree.map(jnp.add, carry, (loss, accuracy, grads)), None

    zeros = (0.0, 0.0, jax.tree.map(jnp.zeros_like, params))
    sums, _ = jax.lax.scan(body, zeros, (jnp.arange(steps), micro))
    return jax.tree.map(lambda x: x / steps, sums)


def apply_if(condition: jax.Array, state: dict, params, opt_state) -> dict:
    """The state one step later: with the new `params` and `opt_state` if `condition`, else the
    old ones (a select inside the compiled step: no host sync)."""
    new, old = (params, opt_state), (state["params"], state["opt_state"])
    params, opt_state = jax.tree.map(lambda n, o: jnp.where(condition, n, o), new, old)
    return {**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1}


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    label_smoothing: float = 0.0,
    mixup_alpha: float = 0.0,
    grad_accum_steps: int = 1,
    axis_name: str | None = None,
):
    """Builds train_step(state, batch) -> (new state, metrics of this step).

    The step draws its randomness itself: fold_in(state["rng"], state["step"]) (and the device
    index under pmap), so nothing is uploaded per step and a resumed run draws exactly the
    numbers of an uninterrupted one. A step whose loss or gradient norm is not finite leaves
    parameters and optimizer state as they were (decided inside the compiled step: no host
    sync); its `finite` metric is False. Metrics: loss (mean cross-entropy on the possibly mixed
    targets), accuracy (argmax against the true labels), grad_norm (global norm before
    clipping), learning_rate, finite. A per-patch model (`per_patch`) takes per-pixel labels
    [B, H, W]: loss and accuracy are means over patches and examples (`targets_and_classes`).
    """

    def loss_fn(params, images, labels, rng):
        mix_rng, dropout_rng = jax.random.split(rng)
        targets, classes = targets_and_classes(labels, model, label_smoothing)
        if mixup_alpha > 0:
            images, targets = mixup(images, targets, mix_rng, mixup_alpha)
        logits = model.apply({"params": params}, images, train=True, rngs={"dropout": dropout_rng})
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        accuracy = jnp.mean(jnp.argmax(logits, -1) == classes)
        return loss, accuracy

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: dict, batch: dict) -> tuple[dict, dict]:
        check_batch(batch, per_patch(model))
        rng = jax.random.fold_in(state["rng"], state["step"])
        if axis_name is not None:  # different dropout masks on each device's shard
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
        loss, accuracy, grads = accumulated_grads(
            grad_fn, state["params"], batch, rng, grad_accum_steps
        )
        if axis_name is not None:
            loss, accuracy, grads = jax.lax.pmean((loss, accuracy, grads), axis_name)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new_state = apply_if(
            finite, state, optax.apply_updates(state["params"], updates), opt_state
        )
        metrics = {
            "loss": loss,
            "accuracy": accuracy,
            "grad_norm": grad_norm,
            "learning_rate": schedule(state["step"]),
            "finite": finite,
        }
        return new_state, metrics

    return train_step


def run_train_step(model: nn.Module, train, tx, schedule, *, axis_name: str | None = None):
    """The train step of a run (the one vit_jax.main runs): `make_train_step` with the run's
    training options `train` (a `TrainOptions`: label smoothing, mixup, gradient
    accumulation)."""
    return make_train_step(
        model,
        tx,
        schedule,
        label_smoothing=train.label_smoothing,
        mixup_alpha=train.mixup_alpha,
        grad_accum_steps=train.grad_accum_steps,
        axis_name=axis_name,
    )


def make_eval_step(model: nn.Module, *, axis_name: str | None = None):
    """Builds eval_step(params, batch) -> sums over the real (mask == 1) examples:
    {"correct", "loss", "count"}; padding rows count for nothing. A per-patch model
    (`per_patch`) sums "correct" and "loss" (against `patch_targets`) over the patches of the
    real examples, and adds their number, "patches", and their "confusion" [K, K] of majority
    class (rows) against predicted class (`confusion_matrix`); "count" stays images."""
    dense = per_patch(model)

    def eval_step(params: dict, batch: dict) -> dict:
        check_batch(batch, dense)
        logits = model.apply({"params": params}, batch["image"])
        targets, classes = targets_and_classes(batch["label"], model, 0.0)
        mask = batch["mask"]
        weights = jnp.broadcast_to(mask[:, None], classes.shape) if dense else mask
        predictions = jnp.argmax(logits, -1)
        sums = {
            "correct": jnp.sum((predictions == classes) * weights),
            "loss": jnp.sum(optax.softmax_cross_entropy(logits, targets) * weights),
            "count": jnp.sum(mask),
        }
        if dense:
            sums["patches"] = jnp.sum(weights)
            sums["confusion"] = confusion_matrix(classes, predictions, weights, model.num_classes)
        if axis_name is not None:
            sums = jax.lax.psum(sums, axis_name)
        return sums

    return eval_step


__all__ = [
    "accumulated_grads",
    "apply_if",
    "check_batch",
    "confusion_matrix",
    "make_eval_step",
    "make_train_step",
    "mean_iou",
    "mixup",
    "patch_targets",
    "per_patch",
    "run_train_step",
    "smooth",
    "soft_targets",
    "targets_and_classes",
]
