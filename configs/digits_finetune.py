"""Fine-tune the default digits run at twice its resolution (16x16 -> 32x32 pixels).

The patch stays 4x4, so the grid grows from 4x4 to 8x8 tokens: learned and factorized position
embeddings and relative-bias tables are resized (bicubic) on restore, sinusoidal and rotary
ones are regenerated for the new grid. Then 300 steps of SGD with momentum, as in the official
ViT fine-tuning recipe. README "Results" lists the accuracy of each position embedding before
and after this fine-tuning.

    python -m vit_jax.main --config=configs/digits.py --workdir=workdirs/digits
    python -m vit_jax.main --config=configs/digits_finetune.py:init_from=workdirs/digits \\
        --workdir=workdirs/digits_ft
"""

from vit_jax.train.config import parse_arg, sibling_config


def get_config(arg: str | None = None):
    args = parse_arg(arg, init_from="workdirs/digits", posemb="learned", image_size=32)
    config = sibling_config(__file__, "digits", f"posemb={args['posemb']}")
    config.model.image_size = (args["image_size"], args["image_size"])
    config.init_from = args["init_from"]
    config.model.stochastic_depth = 0.0
    config.total_steps = 300
    config.label_smoothing = 0.0
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.01
    config.optimizer.weight_decay = 0.0
    config.optimizer.warmup_steps = 20
    config.log_every_steps = 50
    config.checkpoint_every_steps = 300
    return config
