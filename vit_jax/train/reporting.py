"""What a run reports: a progress line, `metrics.jsonl`, TensorBoard events (no TensorFlow).

metrics.jsonl has one JSON object per line:
  train: {"step", "loss", "accuracy", "learning_rate", "grad_norm", "img_per_sec"}
  eval:  {"step", "split", "accuracy", "loss", "num_examples"}
Only process 0 writes; every process may call the methods. A resumed run first drops the
records of steps after its checkpoint (the interrupted run got further than it saved), so the
file reads like that of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax


def format_duration(seconds: float) -> str:
    """4321.0 -> '1h12m01s'; 75 -> '1m15s'; 9.5 -> '9.5s'."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def keep_records_up_to(path: str, step: int) -> None:
    """Rewrites the JSON-lines file at `path` without the records of steps after `step`."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path + ".tmp", "w") as f:
        f.writelines(lines)
    os.replace(path + ".tmp", path)


class Reporter:
    """Writes train/eval records to stdout, WORKDIR/metrics.jsonl and WORKDIR/tensorboard."""

    def __init__(self, workdir: str, total_steps: int, start_step: int = 0):
        self.total_steps = total_steps
        self.enabled = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            path = os.path.join(workdir, "metrics.jsonl")
            keep_records_up_to(path, start_step)
            self._jsonl = open(path, "a")
            self._tb = SummaryWriter(
                os.path.join(workdir, "tensorboard"), purge_step=start_step or None
            )
        self._start = time.perf_counter()
        self._start_step: int | None = None

    def _write(self, record: dict, prefix: str) -> None:
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for key, value in record.items():
            if key not in ("step", "split") and isinstance(value, int | float):
                self._tb.add_scalar(f"{prefix}/{key}", value, record["step"])

    def train(self, step: int, metrics: dict[str, float], img_per_sec: float) -> None:
        """Logs the mean train metrics of the steps up to `step` (1-based count of steps done)."""
        if self._start_step is None:
            self._start_step, self._start = step, time.perf_counter()
        if not self.enabled:
            return
        record = {
            "step": step,
            **{k: float(v) for k, v in metrics.items()},
            "img_per_sec": img_per_sec,
        }
        self._write(record, "train")
        done = step - self._start_step
        elapsed = time.perf_counter() - self._start
        eta = (self.total_steps - step) * elapsed / done if done > 0 else float("nan")
        eta_text = format_duration(eta) if done > 0 else "?"
        print(
            f"step {step:>6}/{self.total_steps} | loss {record['loss']:.4f} | "
            f"acc {record['accuracy']:.3f} | lr {record['learning_rate']:.2e} | "
            f"{img_per_sec:,.0f} img/s | ETA {eta_text}",
            flush=True,
        )

    def eval(self, step: int, split: str, accuracy: float, loss: float, num_examples: int) -> None:
        if not self.enabled:
            return
        record = {
            "step": step,
            "split": split,
            "accuracy": accuracy,
            "loss": loss,
            "num_examples": num_examples,
        }
        self._write(record, f"eval_{split}")
        print(
            f"eval  {step:>6} | {split}: accuracy {accuracy:.4f} | loss {loss:.4f} | "
            f"{num_examples} examples",
            flush=True,
        )

    def message(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stdout, flush=True)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
