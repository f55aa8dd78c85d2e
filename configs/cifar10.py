"""CIFAR-10 from scratch: a ViT-S/4 at 32x32 (64 patch tokens), 200 epochs.

Reproduces the common "ViT on CIFAR-10 without pre-training" setting: small patches, heavy
regularization (random resized crops, flips, mixup, label smoothing, stochastic depth, weight
decay 0.05). Published from-scratch ViTs of this size reach roughly 90-93% with RandAugment;
this recipe (no RandAugment) should land near 88-91%. Not measured here: it needs the dataset
(prepared once with TensorFlow, ~160 MB: README "Install") and an accelerator (~1.5 h on one
A100-class GPU, ~15 min on a v4-8 TPU).

    python -m vit_jax.main --config=configs/cifar10.py --workdir=...
    python -m vit_jax.main --config=configs/cifar10.py:variant=Ti/4,posemb=rope_mixed --workdir=...
"""

from vit_jax.train.config import base_config, model_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, variant="S/4", posemb="learned")
    config = base_config()
    config.model = model_config(
        args["variant"], 32, num_classes=10, posemb=args["posemb"], stochastic_depth=0.1
    )
    config.data.name = "cifar10"
    config.data.crop_area_min = 0.35
    config.data.num_workers = 4
    config.batch_size = 512
    config.eval_batch_size = 1000
    config.num_epochs = 200.0
    config.mixup_alpha = 0.2
    config.label_smoothing = 0.1
    config.optimizer.warmup_steps = 2_000
    config.log_every_steps = 100
    config.eval_every_steps = 2_000
    config.checkpoint_every_steps = 2_000
    return config
