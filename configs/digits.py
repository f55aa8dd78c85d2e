"""The default run: a small ViT on the handwritten digits embedded in scikit-learn.

Runs offline on a CPU. The 1,797 8x8 digits are built into a tfds dataset on first use (1,500
train, 297 test; stratified, seeded). The images are upsampled to 16x16 and cut into 4x4
patches: 16 tokens plus a class token.

Expect about 97-98% test accuracy on all 297 test digits after ~2 minutes of training on 2 CPU
cores (see README "Results"). Small data needs augmentation and regularization for a ViT:
random resized crops (area 0.5-1), stochastic depth, weight decay and label smoothing
(without them a 4-layer ViT stops near 90%).

    python -m vit_jax.main --config=configs/digits.py --workdir=/tmp/digits
    python -m vit_jax.main --config=configs/digits.py:posemb=rope_axial --workdir=...
    python -m vit_jax.main --config=configs/digits.py:variant=S/4 --workdir=...

The model is smaller than any in the zoo (D=96, 4 layers, 4 heads, MLP 192, patch 4);
`variant=` trains a zoo model instead, with its own sizes (and patch).
"""

from vit_jax.train.config import base_config, model_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, posemb="learned", variant=None, image_size=16)
    small = dict(hidden_size=96, num_layers=4, num_heads=4, mlp_dim=192)
    config = base_config()
    config.model = model_config(
        args["variant"] or "Ti/4",  # the patch of the small default model
        args["image_size"],
        num_classes=10,
        posemb=args["posemb"],
        stochastic_depth=0.1,
        **({} if args["variant"] else small),
    )
    config.data.crop_area_min = 0.5
    config.data.flip = False  # a flipped digit is another digit (or none)
    config.data.cache = True
    config.eval_batch_size = 128
    config.total_steps = 1500
    config.label_smoothing = 0.1
    config.log_every_steps = 100
    return config
