"""Command line: train and evaluate a ViT from a config file.

    python -m vit_jax.main --config=configs/digits.py --workdir=/tmp/digits
    python -m vit_jax.main --config=configs/cifar10.py:variant=S/16 --workdir=... \\
        --config.model.posemb=rope_axial --config.batch_size=256

Several hosts: run the same command on every host with --coordinator=HOST:PORT
--num_processes=N --process_id=I (on Cloud TPU, --distributed alone: JAX finds the rest).
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py[:arg]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the config are written.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
flags.DEFINE_string("coordinator", None, "Multi-process: coordinator address HOST:PORT.")
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: index of this process.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax
    from absl import logging

    if not FLAGS["verbosity"].present:  # Orbax and tfds are chatty at INFO; -v 0 shows it
        logging.set_verbosity(logging.WARNING)

    if FLAGS.distributed or FLAGS.coordinator:
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    from vit_jax.train.loop import train_and_evaluate

    try:
        train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (ValueError, FileNotFoundError) as e:  # user-caused: one clear message, no traceback
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    app.run(main)
