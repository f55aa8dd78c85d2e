"""What a run reports: a progress line, `metrics.jsonl`, TensorBoard events (no TensorFlow).

metrics.jsonl has one JSON object per line:
  train (means over the steps since the previous record, but learning_rate: the last step's):
         {"step", "loss", "accuracy", "learning_rate", "grad_norm", "nonfinite_steps",
          "img_per_sec", "mfu" (model FLOPs utilisation, vit_jax/train/cost.py), "data_wait"
          (share of the time spent waiting for batches)}; the first record after a (re)start
          adds "compile_seconds" (the first step, compilation included, timed apart: img/s
          starts after it, so a record of that step alone has no img_per_sec or mfu)
  eval:  {"step", "split", "accuracy", "loss", "num_examples"}, and "miou" (mean IoU) for a
         model scored per patch (accuracy and loss are then per patch)
A non-finite value is written as the string "nan", "inf" or "-inf" (bare NaN is not JSON).
Only process 0 writes; every process may call the methods. A resumed run first drops the
records of steps after its checkpoint (the interrupted run got further than it saved) and a
line torn by a kill during a write, so the file reads like that of an uninterrupted run; an
evaluation already recorded for a step is not written again.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time

import jax
import numpy as np
from tensorboardX.proto import event_pb2, summary_pb2

from vit_jax.train.stopping import DivergedError, writing


def format_duration(seconds: float) -> str:
    """4321.0 -> '1h12m01s'; 75 -> '1m15s'; 9.5 -> '9.5s'."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def read_records(path: str) -> list[dict]:
    """The records of a JSON-lines file; a line that does not parse (torn by a kill during a
    write) is skipped."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
    return records


def keep_records_up_to(path: str, step: int) -> list[dict]:
    """Rewrites the JSON-lines file at `path` with only its readable records of steps up to
    `step` (atomically); returns them. Anything but a regular file is left alone."""
    if not os.path.isfile(path):
        return []
    records = [r for r in read_records(path) if r["step"] <= step]
    if os.path.exists(path):
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        os.replace(path + ".tmp", path)
    return records


def json_safe(value):
    """A metric value as JSON: non-finite floats as "nan", "inf" or "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


class PendingMetrics:
    """The device metrics of the steps since the last log, fetched to the host only when they
    are logged or checked (no host sync per step), and the window's clock: images per second
    and data wait count training time only (`aside` takes evaluations and saves out)."""

    def __init__(self, fetch, step: int, batch_size: int):
        self._fetch, self._batch_size = fetch, batch_size
        self._metrics: list[dict] = []
        self._step, self._time = step, time.perf_counter()
        self._waited = self._aside = 0.0
        self.aside_seconds = 0.0  # of the whole run, for its summary

    def add(self, metrics: dict) -> None:
        self._metrics.append(metrics)

    def waited(self, seconds: float, previous: dict | None = None) -> None:
        """Counts `seconds` spent fetching the next batch as waiting for data if the step that
        gave `previous` (its metrics; None: no step before) had finished by then: while it was
        still running the fetch cost the devices nothing (steps are dispatched asynchronously).
        An upper bound on the devices' idle time: they may have finished during the fetch."""
        if previous is None or all(x.is_ready() for x in jax.tree.leaves(previous)):
            self._waited += seconds

    @contextlib.contextmanager
    def aside(self, state):
        """Leaves the time inside (an evaluation, a checkpoint save) out of images per second and
        data wait, after waiting for `state`: the steps dispatched before count as training."""
        jax.block_until_ready(state)
        start = time.perf_counter()
        try:
            yield
        finally:
            self._aside += time.perf_counter() - start
            self.aside_seconds += time.perf_counter() - start

    def restart_clock(self, step: int) -> None:
        """Measures images per second (and data wait) from now and `step` on: after the first
        step, whose time is compilation."""
        self._step, self._time, self._waited, self._aside = step, time.perf_counter(), 0.0, 0.0

    def check(self, *, stop: bool) -> int:
        """The number of pending non-finite steps; with `stop`, raises DivergedError naming the
        first one and its loss and gradient norm."""
        finite = [bool(self._fetch(m["finite"])) for m in self._metrics]
        if stop and not all(finite):
            first = finite.index(False)
            m = {k: float(self._fetch(v)) for k, v in self._metrics[first].items()}
            raise DivergedError(
                f"step {self._step + first + 1}: loss={m['loss']}, grad_norm={m['grad_norm']} "
                "is not finite. The update was skipped and no non-finite state was saved; the "
                "newest checkpoint, if any, is the last finite one. Lower "
                "optimizer.learning_rate or raise warmup_steps, or set nonfinite='skip' to skip "
                "such steps."
            )
        return finite.count(False)

    def flush(self, step: int, *, stop: bool) -> tuple[dict[str, float], float | None]:
        """(mean metrics of the pending steps with their non-finite count and `data_wait`, the
        fraction of the training time the devices waited for batches; images per second of
        training time, evaluations and saves left out) up to `step`; the pending list starts
        again. Images per second is None when the clock restarted at `step` (nothing to
        measure)."""
        nonfinite = self.check(stop=stop)
        keys = [k for k in self._metrics[0] if k != "finite"]
        means = {k: float(np.mean([self._fetch(m[k]) for m in self._metrics])) for k in keys}
        if "learning_rate" in means:  # the schedule's value at `step`, not a window mean
            means["learning_rate"] = float(self._fetch(self._metrics[-1]["learning_rate"]))
        now = time.perf_counter()
        steps = step - self._step  # 0 when only the first step (its compilation) is pending
        training = max(now - self._time - self._aside, 1e-9)
        img_per_sec = steps * self._batch_size / training if steps else None
        data_wait = min(self._waited / training, 1.0)
        self._metrics, self._step, self._time = [], step, now
        self._waited = self._aside = 0.0
        return {**means, "nonfinite_steps": nonfinite, "data_wait": data_wait}, img_per_sec


def speed_text(record: dict) -> str:
    """'1,950 img/s | MFU 0.31 | data 2%' from a train record's img_per_sec, mfu and data_wait
    ('compiled' for a record of the first step alone)."""
    if "img_per_sec" not in record:
        return "compiled"
    text = f"{record['img_per_sec']:,.0f} img/s"
    if "mfu" in record:
        text += f" | MFU {record['mfu']:.2f}"
    if "data_wait" in record:
        text += f" | data {100 * record['data_wait']:.0f}%"
    return text


class Reporter:
    """Writes train/eval records to stdout, WORKDIR/metrics.jsonl and WORKDIR/tensorboard."""

    def __init__(self, workdir: str, total_steps: int, start_step: int = 0):
        self.total_steps = total_steps
        self.enabled = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        self._evaluated: set[tuple[int, str]] = set()
        if self.enabled:
            path = os.path.join(workdir, "metrics.jsonl")
            with writing(path):
                kept = keep_records_up_to(path, start_step)
                self._jsonl = open(path, "a")
            self._evaluated = {(r["step"], r["split"]) for r in kept if "split" in r}
            self._tb = TensorBoardWriter(os.path.join(workdir, "tensorboard"), start_step)
        self._start = time.perf_counter()
        self._start_step: int | None = None

    def _write(self, record: dict, prefix: str) -> None:
        safe = {k: json_safe(v) for k, v in record.items()}
        with writing(self._jsonl.name):
            self._jsonl.write(json.dumps(safe, allow_nan=False) + "\n")
            self._jsonl.flush()
        scalars = {
            f"{prefix}/{key}": value
            for key, value in record.items()
            if key not in ("step", "split") and isinstance(value, int | float)
        }
        self._tb.write(record["step"], scalars)

    def train(self, step: int, metrics: dict[str, float], img_per_sec: float | None) -> None:
        """Logs the mean train metrics of the steps up to `step` (1-based count of steps done)."""
        if self._start_step is None:
            self._start_step, self._start = step, time.perf_counter()
        if not self.enabled:
            return
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        if img_per_sec is not None:
            record["img_per_sec"] = img_per_sec
        self._write(record, "train")
        done = step - self._start_step
        elapsed = time.perf_counter() - self._start
        eta = (self.total_steps - step) * elapsed / done if done > 0 else float("nan")
        eta_text = format_duration(eta) if done > 0 else "?"
        print(
            f"step {step:>6}/{self.total_steps} | loss {record['loss']:.4f} | "
            f"acc {record['accuracy']:.3f} | lr {record['learning_rate']:.2e} | "
            f"{speed_text(record)} | ETA {eta_text}",
            flush=True,
        )

    def eval(
        self,
        step: int,
        split: str,
        accuracy: float,
        loss: float,
        num_examples: int,
        miou: float | None = None,
    ) -> None:
        if not self.enabled or (step, split) in self._evaluated:
            return
        self._evaluated.add((step, split))
        record = {
            "step": step,
            "split": split,
            "accuracy": accuracy,
            "loss": loss,
            "num_examples": num_examples,
        }
        if miou is not None:
            record["miou"] = miou
        self._write(record, f"eval_{split}")
        miou_text = "" if miou is None else f" | mIoU {miou:.4f}"
        print(
            f"eval  {step:>6} | {split}: accuracy {accuracy:.4f}{miou_text} | loss {loss:.4f} | "
            f"{num_examples} examples",
            flush=True,
        )

    def message(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stdout, flush=True)

    def close(self) -> None:
        if self.enabled:
            for stream in (self._jsonl, self._tb):
                with contextlib.suppress(OSError):  # closing after a failed write
                    stream.close()


class TensorBoardWriter:
    """TensorBoard scalars written synchronously (tensorboardX's events format, no
    TensorFlow): a write that fails raises here instead of killing a background thread that
    the run would then wait on forever. A resumed run marks `start_step` so that TensorBoard
    drops the interrupted run's later events."""

    def __init__(self, directory: str, start_step: int = 0):
        from tensorboardX.event_file_writer import EventsWriter

        with writing(directory):
            os.makedirs(directory, exist_ok=True)
            # A suffix of its own: two starts within a second must not share a file.
            suffix = f".{os.getpid()}.{time.time_ns()}"
            self._writer = EventsWriter(os.path.join(directory, "events"), suffix)
        self._path = directory
        if start_step:
            log = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            self._emit(event_pb2.Event(wall_time=time.time(), step=start_step, session_log=log))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        """One event per scalar; a non-finite value is written as it is (TensorBoard shows it),
        without the warning line per value that tensorboardX's `scalar` would log."""
        for tag, value in scalars.items():
            summary = summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(value))]
            )
            self._emit(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def _emit(self, event) -> None:
        with writing(self._path):
            self._writer.write_event(event)
            self._writer.flush()

    def close(self) -> None:
        self._writer.close()
