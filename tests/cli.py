"""Running the training CLI in subprocesses, as a user (or a cluster) would."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_digits_flags(data_dir, workdir, total_steps, **overrides) -> list[str]:
    """CLI flags of a small, fast digits run (stochastic depth on, to exercise the rng)."""
    values = {
        "model.hidden_size": 32,
        "model.num_layers": 2,
        "model.num_heads": 4,
        "model.mlp_dim": 64,
        "model.image_size": "(8,8)",
        "total_steps": total_steps,
        "batch_size": 32,
        "eval_batch_size": 64,
        "log_every_steps": 1,
        "checkpoint_every_steps": 25,
        "data.data_dir": str(data_dir),
        "plots": False,  # drawn only where plots are tested (tests/test_viz.py)
        **overrides,
    }
    flags = [f"--config={ROOT}/configs/digits.py", f"--workdir={workdir}"]
    return flags + [f"--config.{k}={v}" for k, v in values.items()]


def env(num_devices: int) -> dict:
    return {**os.environ, "JAX_NUM_CPU_DEVICES": str(num_devices), "PYTHONPATH": ROOT}


def main_command(flags: list[str]) -> list[str]:
    return [sys.executable, "-m", "vit_jax.main", *flags]


def run(
    flags: list[str], num_devices: int = 1, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        main_command(flags),
        env=env(num_devices),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
