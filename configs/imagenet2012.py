"""ImageNet-1k from scratch with the ViT paper's ViT-B/16 recipe (Dosovitskiy et al. 2021).

300 epochs at 224x224, batch 4096, Adam (β1 0.9, β2 0.999) with decoupled weight decay 0.3,
peak learning rate 3e-3, 10k warmup steps then cosine decay (paper, Table 3), global-norm
clipping at 1, dropout 0.1, a 768-wide tanh pre-logits layer, inception crops and flips.
The paper reports 77.9% top-1 for ViT-B/16 trained on ImageNet-1k alone (after fine-tuning
at 384); expect about 74-76% at 224 straight out of this run. Regularized recipes ("How to
train your ViT", AugReg) do better; add mixup here with --config.mixup_alpha=0.2.

Needs the prepared dataset (the archives in <data_dir>/downloads/manual, then prepared once with
TensorFlow: README "Install") and a TPU pod or GPU cluster: ~95k steps; about 1 day on a v3-128.

    python -m vit_jax.main --config=configs/imagenet2012.py --workdir=/mnt/runs/vit_b16 \\
        --distributed   # every host: a shared (NFS / gcsfuse) workdir
"""

from vit_jax.train.config import base_config, model_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, variant="B/16", posemb="learned")
    config = base_config()
    config.model = model_config(
        args["variant"],
        224,
        num_classes=1000,
        posemb=args["posemb"],
        representation_size=768,
        dropout_rate=0.1,
    )
    config.data.name = "imagenet2012"
    config.data.eval_split = "validation"
    config.data.eval_crop_fraction = 0.875
    config.data.num_workers = 16
    config.batch_size = 4096
    config.eval_batch_size = 4096
    config.num_epochs = 300.0
    config.optimizer.learning_rate = 3e-3
    config.optimizer.warmup_steps = 10_000
    config.optimizer.weight_decay = 0.3
    config.log_every_steps = 100
    config.eval_every_steps = 5_000
    config.checkpoint_every_steps = 2_000
    config.keep_checkpoints = 3
    return config
