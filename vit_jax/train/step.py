"""Pure train and eval steps. They know nothing of devices, files or logging.

`train_step(state, batch) -> (state, metrics)` and `eval_step(params, batch) -> sums` are
made by `make_train_step` / `make_eval_step` from the model, the optimizer and the training
options. Under pmap the caller passes `axis_name`, and gradients and metrics are averaged across
devices; under jit over a mesh XLA inserts the same all-reduce on its own.

Batches: {"image": float32 [B, H, W, C] in [-1, 1], "label": int32 [B]} (+ "mask" [B] at eval).
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


def check_batch(batch: dict) -> None:
    """Checks a batch's shapes when the step is traced (free at run time): "image" [B, H, W, C],
    and "label" and any "mask" [B]."""
    chex.assert_rank(batch["image"], 4)
    chex.assert_shape([v for k, v in batch.items() if k != "image"], batch["image"].shape[:1])


def soft_targets(labels: jax.Array, num_classes: int, label_smoothing: float) -> jax.Array:
    """int labels [B] -> smoothed one-hot targets [B, K]."""
    onehot = jax.nn.one_hot(labels, num_classes)
    return onehot * (1.0 - label_smoothing) + label_smoothing / num_classes


def mixup(images: jax.Array, targets: jax.Array, rng: jax.Array, alpha: float):
    """Mixes each example with its neighbour in the batch (big_vision's roll), one λ ~ Beta(α, α)
    per batch. Returns mixed images [B, H, W, C] and targets [B, K]."""
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
    clipping), learning_rate, finite.
    """

    def loss_fn(params, images, labels, rng):
        mix_rng, dropout_rng = jax.random.split(rng)
        targets = soft_targets(labels, model.num_classes, label_smoothing)
        if mixup_alpha > 0:
            images, targets = mixup(images, targets, mix_rng, mixup_alpha)
        logits = model.apply({"params": params}, images, train=True, rngs={"dropout": dropout_rng})
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        return loss, accuracy

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: dict, batch: dict) -> tuple[dict, dict]:
        check_batch(batch)
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


def make_eval_step(model: nn.Module, *, axis_name: str | None = None):
    """Builds eval_step(params, batch) -> sums over the real (mask == 1) examples:
    {"correct", "loss", "count"}; padding rows count for nothing."""

    def eval_step(params: dict, batch: dict) -> dict:
        check_batch(batch)
        logits = model.apply({"params": params}, batch["image"])
        mask = batch["mask"]
        labels = jax.nn.one_hot(batch["label"], model.num_classes)
        sums = {
            "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
            "loss": jnp.sum(optax.softmax_cross_entropy(logits, labels) * mask),
            "count": jnp.sum(mask),
        }
        if axis_name is not None:
            sums = jax.lax.psum(sums, axis_name)
        return sums

    return eval_step


__all__ = [
    "accumulated_grads",
    "apply_if",
    "check_batch",
    "make_eval_step",
    "make_train_step",
    "mixup",
    "soft_targets",
]
