"""The official ViT fine-tuning recipe: ViT-B/16 from a published checkpoint, CIFAR-10 at 384.

Starts from the original ImageNet-21k ViT-B/16 (`vit:B/16-i21k`, gs://vit_models/imagenet21k/
ViT-B_16.npz, downloaded once; any other published name, URL or path works too, e.g.
`init_from=augreg:B/16-i21k`): the 14x14 position embedding is resized to 24x24, the 21k-class
head and the pre-logits layer are dropped and a zero head for 10 classes is created. SGD with
momentum 0.9, peak learning rate 0.03, 500 warmup steps, cosine decay, global-norm clipping at
1, no weight decay, batch 512, 10k steps, as in the official repository, which reports 99.0%
test accuracy (measured there on 9,728 of the 10,000 test images; here on all 10,000). Not
measured here: it needs the network (or the file in the cache), the prepared dataset and an
accelerator (~2 h on a v3-8 TPU).

    python -m vit_jax.main --config=configs/cifar10_finetune.py --workdir=...
    python -m vit_jax.main --config=configs/cifar10_finetune.py:init_from=augreg:B/16-i21k \\
        --workdir=...
"""

from vit_jax.train.config import base_config, model_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, init_from="vit:B/16-i21k", variant="B/16", image_size=384)
    config = base_config()
    config.model = model_config(args["variant"], args["image_size"], num_classes=10)
    config.init_from = args["init_from"]
    config.data.name = "cifar10"
    config.data.crop_area_min = 0.05
    config.data.num_workers = 8
    config.batch_size = 512
    config.eval_batch_size = 512
    config.total_steps = 10_000
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.03
    config.optimizer.weight_decay = 0.0
    config.optimizer.warmup_steps = 500
    config.log_every_steps = 100
    config.eval_every_steps = 1_000
    config.checkpoint_every_steps = 1_000
    return config
