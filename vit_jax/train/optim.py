"""Optimizers and learning-rate schedules from the `config.optimizer` section.

`OptimizerOptions` declares its fields (default, allowed values, help); `make_optimizer` and
`learning_rate_schedule` take the checked options, e.g. `read(OptimizerOptions, config.optimizer,
"optimizer.")` (done for a whole config by `vit_jax.train.config.validate`).
"""

from __future__ import annotations

import dataclasses

import jax
import optax

from vit_jax.options import option

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class OptimizerOptions:
    """The optimizer, its learning-rate schedule and gradient clipping."""

    name: str = option("adamw", "optimizer: AdamW or SGD with momentum", choices=OPTIMIZERS)
    learning_rate: float = option(1e-3, "peak learning rate (after warmup)", low=0, low_open=True)
    schedule: str = option("cosine", "decay after warmup", choices=SCHEDULES)
    warmup_steps: int = option(100, "steps of linear warmup from 0 to learning_rate", low=0)
    end_learning_rate: float = option(0.0, "learning rate at the last step (cosine, linear)", low=0)
    weight_decay: float = option(0.05, "decoupled weight decay, on kernels only", low=0)
    b1: float = option(0.9, "AdamW: decay of the first moment", low=0, high=1, high_open=True)
    b2: float = option(0.999, "AdamW: decay of the second moment", low=0, high=1, high_open=True)
    eps: float = option(1e-8, "AdamW: added to the second-moment root", low=0, low_open=True)
    momentum: float = option(0.9, "SGD: momentum", low=0, high=1, high_open=True)
    nesterov: bool = option(False, "SGD: Nesterov momentum")
    grad_clip_norm: float | None = option(
        1.0, "clip gradients to this global norm; 0 or None disables it", low=0, optional=True
    )


def learning_rate_schedule(cfg: OptimizerOptions, total_steps: int) -> optax.Schedule:
    """Step -> learning rate: linear warmup from 0 to cfg.learning_rate, then cosine/linear decay
    to cfg.end_learning_rate at `total_steps` (or constant)."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    end = cfg.end_learning_rate
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


def warmup_note(cfg: OptimizerOptions, total_steps: int) -> str | None:
    """What a run too short for its warmup gets (the warmup is cut to total_steps - 1 and the
    learning rate never decays), said once at the start; None when the warmup fits."""
    if cfg.warmup_steps < total_steps:
        return None
    tenth, rising = total_steps // 10, max(total_steps - 1, 0)
    after = "reaches learning_rate" if cfg.schedule == "constant" else "decays"
    fix = f"={tenth} warms up for a tenth of the run" if tenth else "=0: no warmup"
    return (
        f"note: optimizer.warmup_steps={cfg.warmup_steps} is not below total_steps="
        f"{total_steps}: the learning rate rises for {rising} step{'s' * (rising != 1)} and the "
        f"run ends before it {after}; e.g. --config.optimizer.warmup_steps{fix}."
    )


def decay_mask(params) -> dict:
    """True for the leaves weight decay applies to: every `kernel` (dense, attention, patch
    embedding, head). Biases, norms, position embeddings, the class token, RoPE frequencies,
    relative-bias tables and the MAP probe are not decayed."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )


def make_optimizer(
    cfg: OptimizerOptions, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax chain (clip -> optimizer with masked decoupled weight decay) and its schedule."""
    schedule = learning_rate_schedule(cfg, total_steps)
    parts = []
    if cfg.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    if cfg.name == "adamw":
        parts.append(
            optax.adamw(
                schedule,
                b1=cfg.b1,
                b2=cfg.b2,
                eps=cfg.eps,
                weight_decay=cfg.weight_decay,
                mask=decay_mask,
            )
        )
    else:
        if cfg.weight_decay:
            parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
        parts.append(optax.sgd(schedule, momentum=cfg.momentum, nesterov=cfg.nesterov))
    return optax.chain(*parts), schedule
