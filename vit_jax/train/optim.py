"""Optimizers and learning-rate schedules from the `config.optimizer` block.

Fields: name ('adamw' | 'sgd'), learning_rate (peak), schedule ('cosine' | 'linear' | 'constant'),
warmup_steps, end_learning_rate, weight_decay (decoupled; applied to kernels only), b1, b2, eps
(AdamW), momentum, nesterov (SGD), grad_clip_norm (global norm; 0 or None disables it).
"""

from __future__ import annotations

import jax
import optax

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "linear", "constant")


def check(cfg) -> None:
    """Raises ValueError for an optimizer block that cannot work (before any compile)."""
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name={cfg.name!r} is unknown; use one of {OPTIMIZERS}.")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"optimizer.schedule={cfg.schedule!r} is unknown; use one of {SCHEDULES}.")
    if cfg.learning_rate <= 0:
        raise ValueError(f"optimizer.learning_rate={cfg.learning_rate} must be positive.")


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to cfg.learning_rate, then cosine/linear decay (or constant)."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    end = cfg.get("end_learning_rate", 0.0)
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(
            cfg.learning_rate, decay_steps, alpha=end / cfg.learning_rate
        )
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(cfg.learning_rate, end, decay_steps)
    else:
        decay = optax.constant_schedule(cfg.learning_rate)
    if warmup == 0:
        return decay
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.learning_rate, warmup), decay], [warmup]
    )


def decay_mask(params) -> dict:
    """True for the leaves weight decay applies to: every `kernel` (dense, attention, patch
    embedding, head). Biases, norms, position embeddings, the class token, RoPE frequencies,
    relative-bias tables and the MAP probe are not decayed."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax chain (clip -> optimizer with masked decoupled weight decay) and its schedule."""
    check(cfg)
    schedule = learning_rate_schedule(cfg, total_steps)
    parts = []
    if cfg.get("grad_clip_norm"):
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    if cfg.name == "adamw":
        parts.append(
            optax.adamw(
                schedule,
                b1=cfg.get("b1", 0.9),
                b2=cfg.get("b2", 0.999),
                eps=cfg.get("eps", 1e-8),
                weight_decay=cfg.weight_decay,
                mask=decay_mask,
            )
        )
    else:
        if cfg.weight_decay:
            parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
        parts.append(
            optax.sgd(
                schedule, momentum=cfg.get("momentum", 0.9), nesterov=cfg.get("nesterov", False)
            )
        )
    return optax.chain(*parts), schedule
