"""Reliability: non-finite steps never reach a checkpoint, logs survive kills, exit statuses."""

import json
import os
import shutil
import signal
import time

import chex
import numpy as np
import pytest

from tests import cli
from tests.conftest import SMALL, losses_by_step, read_metrics
from tests.conftest import tiny_config as shared_tiny_config
from vit_jax.checkpoint import UnreadableCheckpointError
from vit_jax.train import stopping
from vit_jax.train.loop import train_and_evaluate
from vit_jax.train.reporting import Reporter


def tiny_config(data_dir, **overrides):
    """The shared tiny run, 8 steps without warmup, a checkpoint every 2 (one kept)."""
    settings = dict(total_steps=8, checkpoint_every_steps=2, keep_checkpoints=1)
    return shared_tiny_config(data_dir, **{"optimizer.warmup_steps": 0, **settings, **overrides})


# A learning rate that makes the loss non-finite within a few steps.
DIVERGING = {"optimizer.learning_rate": 1e30, "optimizer.grad_clip_norm": 0.0}


def test_a_diverging_run_stops_naming_the_step_and_keeps_its_last_finite_checkpoint(
    digits_dir, tmp_path
):
    workdir = tmp_path / "run"
    with pytest.raises(stopping.DivergedError, match=r"step (\d+): loss=.* is not finite"):
        train_and_evaluate(tiny_config(digits_dir, **DIVERGING), str(workdir))
    records = read_metrics(workdir)
    assert all(isinstance(r["loss"], float | str) for r in records)  # valid JSON throughout
    for step in os.listdir(workdir / "checkpoints"):
        chex.assert_tree_all_finite(_stored_params(workdir / "checkpoints" / step))


def test_skip_mode_skips_non_finite_updates_and_counts_them(digits_dir, tmp_path):
    workdir = tmp_path / "run"
    config = tiny_config(digits_dir, nonfinite="skip", **DIVERGING)
    train_and_evaluate(config, str(workdir))
    train = [r for r in read_metrics(workdir) if "split" not in r]
    assert sum(r["nonfinite_steps"] for r in train) > 0
    assert any(r["loss"] in ("nan", "inf") for r in train)  # written as JSON strings
    chex.assert_tree_all_finite(_stored_params(workdir / "checkpoints" / "8"))


def _stored_params(step_dir) -> list[np.ndarray]:
    from vit_jax.checkpoint import load_params
    from vit_jax.models import paths

    params, _ = load_params(str(step_dir))
    return list(paths.flatten(params).values())


@pytest.mark.parametrize("processes", [1, 2])
def test_ctrl_c_stops_a_run_as_sigterm_does_with_one_process_or_several(processes, monkeypatch):
    # With several processes JAX's SIGTERM handler (its preemption notifier, here a recorder)
    # stays, and SIGINT must reach it as a SIGTERM; with one, both set the stop flag.
    monkeypatch.setattr(stopping.jax, "process_count", lambda: processes)
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        before = signal.getsignal(signal.SIGINT)
        with stopping.StopSignals() as signals:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # Python runs handlers between bytecodes of the main thread
            assert signals.requested == (processes == 1)
            assert received == ([] if processes == 1 else [signal.SIGTERM])
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        signal.signal(signal.SIGTERM, previous)


SIGNAL_WHILE_LOADING = """
import os, signal, time
from vit_jax.train.command_line import load

def get_config():
    os.kill(os.getpid(), signal.{name})  # while the config loads, before any run handler
    time.sleep(600)  # not reached: the run ends at once (else the test times out)
    return load("digits")
"""


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_stop_signal_before_training_begins_is_one_line_and_status_75(tmp_path, name):
    """Python's default would be a KeyboardInterrupt traceback, or none when JAX's gc callback
    swallows it and the run trains to the end; SIGTERM's a silent death."""
    import subprocess

    config = tmp_path / "signals.py"
    config.write_text(SIGNAL_WHILE_LOADING.replace("{name}", name))
    workdir = tmp_path / "run"
    out = subprocess.run(
        cli.main_command([f"--config={config}", f"--workdir={workdir}"]),
        env=cli.env(1),
        cwd=cli.ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == stopping.PREEMPTED, out.stderr[-2000:]
    assert out.stderr == (
        f"stopped by {name} before training began: nothing was written; rerun the same "
        "command to start.\n"
    )
    assert not workdir.exists()


def test_a_torn_last_line_of_metrics_is_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    good = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 3, "loss": 1.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"step": 4, "lo')
    reporter = Reporter(str(tmp_path), total_steps=10, start_step=2)
    metrics = {"loss": float("nan"), "accuracy": 0.5, "learning_rate": 1e-3, "grad_norm": 1.0}
    reporter.train(3, metrics, 10.0)
    reporter.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines[:2]] == good[:2]
    assert json.loads(lines[2])["loss"] == "nan" and len(lines) == 3


def test_rerunning_a_finished_run_writes_no_second_final_evaluation(digits_dir, tmp_path, capsys):
    workdir = str(tmp_path / "run")
    config = tiny_config(digits_dir, total_steps=2, **{"optimizer.warmup_steps": 2})
    first = train_and_evaluate(config, workdir)  # its 2 warmup steps do not fit: a note
    out = capsys.readouterr().out
    assert out.count("note: optimizer.warmup_steps=2 is not below") == 1
    # img/s of the summary: the second step's 32 images over its time, the first one compiling
    # and the final save (evaluations and saves are not training time) left out
    assert 0 < first["compile_seconds"] < first["train_seconds"]
    assert 0 < first["eval_and_save_seconds"] < first["train_seconds"]
    after = first["train_seconds"] - first["compile_seconds"] - first["eval_and_save_seconds"]
    assert first["img_per_sec"] == pytest.approx(32 / after)
    assert f"(the first, compiling: {first['compile_seconds']:.1f}s; then" in out
    again = train_and_evaluate(config, workdir)
    assert again["accuracy"] == first["accuracy"]
    evals = [r for r in read_metrics(workdir) if "split" in r]
    assert [r["step"] for r in evals] == [2]
    stored = open(os.path.join(workdir, "config.json")).read()
    shorter = tiny_config(digits_dir, total_steps=1, **{"optimizer.warmup_steps": 0})
    with pytest.raises(ValueError, match="newest checkpoint is at step 2, past total_steps=1"):
        train_and_evaluate(shorter, workdir)
    assert open(os.path.join(workdir, "config.json")).read() == stored  # not rewritten


def test_a_non_finite_checkpoint_is_refused_as_init_from(tmp_path):
    import jax

    from tests.conftest import random_params
    from vit_jax import models
    from vit_jax.checkpoint import UnreadableCheckpointError, export_npz, restore_into

    model = models.create("Ti/4", num_classes=3, image_size=8, **SMALL)
    params = random_params(model)
    params["head"]["bias"][1] = np.nan
    export_npz(tmp_path / "nan.npz", params)
    with pytest.raises(UnreadableCheckpointError, match="non-finite values .* 'head/bias'"):
        restore_into(str(tmp_path / "nan.npz"), model, jax.random.key(0), verbose=False)


def test_the_command_line_exits_with_the_status_of_a_diverged_run(digits_dir, tmp_path):
    from tests import cli

    flags = cli.tiny_digits_flags(digits_dir, tmp_path / "run", 8, **DIVERGING)
    result = cli.run(flags)
    assert result.returncode == stopping.DIVERGED == 3
    assert "error: training diverged: step" in result.stderr and "Traceback" not in result.stderr


def test_checkpoints_by_time_and_the_provenance_of_each_start(digits_dir, tmp_path):
    workdir = tmp_path / "run"
    config = tiny_config(
        digits_dir, checkpoint_every_steps=1000, checkpoint_every_minutes=1e-6, keep_checkpoints=20
    )
    train_and_evaluate(config, str(workdir))
    steps = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    assert steps[-1] == 8 and len(steps) > 1  # saved by time, not only at the end
    hourly = tiny_config(digits_dir, checkpoint_every_steps=1000, checkpoint_every_minutes=60)
    train_and_evaluate(hourly, str(tmp_path / "hourly"))
    assert os.listdir(tmp_path / "hourly" / "checkpoints") == ["8"]  # no save at the first step
    train_and_evaluate(config, str(workdir))  # a rerun: one more start recorded
    with open(workdir / "provenance.jsonl") as f:
        starts = [json.loads(line) for line in f]
    assert len(starts) == 2
    assert starts[0]["versions"]["jax"] and starts[0]["device_count"] == 8
    assert starts[0]["platform"] == "cpu" and starts[0]["command"]


def _damage(step_dir, how: str) -> None:
    """Zero-fills or truncates every array file, deletes the OCDBT manifest, or empties the
    step dir."""
    if how in ("zero-filled", "truncated"):
        for root, _, files in os.walk(step_dir / "state"):
            for name in files:
                if "ocdbt" in root and os.sep + "d" in root:
                    path = os.path.join(root, name)
                    with open(path, "r+b") as f:
                        if how == "truncated":
                            f.truncate(10)
                        else:
                            f.write(b"\0" * os.path.getsize(path))
    elif how == "no manifest":
        os.remove(step_dir / "state" / "manifest.ocdbt")
    else:
        shutil.rmtree(step_dir)
        os.mkdir(step_dir)


@pytest.mark.parametrize("how", ["zero-filled", "no manifest", "empty"])
def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_previous_one_resumes(
    digits_dir, tmp_path, how
):
    config = tiny_config(digits_dir, total_steps=6, keep_checkpoints=3)
    reference = tmp_path / "reference"
    train_and_evaluate(config, str(reference))
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    _damage(workdir / "checkpoints" / "6", how)
    summary = train_and_evaluate(config, str(workdir))
    assert summary["step"] == 6
    assert [d.split("-")[0] for d in os.listdir(workdir / "damaged_checkpoints")] == ["6"]
    expected, got = losses_by_step(reference), losses_by_step(workdir)
    assert sorted(got) == list(range(1, 7))
    np.testing.assert_allclose([got[s] for s in (5, 6)], [expected[s] for s in (5, 6)], rtol=1e-5)


def test_a_checkpoint_with_every_file_damaged_costs_one_line_at_the_command_line(
    digits_dir, tmp_path
):
    """Every array failing at once: Orbax abandons the reads still in flight, whose failures
    Python would print as hundreds of tracebacks; the user sees the one line that says what
    happened and where the checkpoint went."""
    workdir = tmp_path / "run"
    flags = cli.tiny_digits_flags(
        digits_dir, workdir, 4, checkpoint_every_steps=2, keep_checkpoints=3
    )
    assert cli.run(flags).returncode == 0
    _damage(workdir / "checkpoints" / "4", "truncated")
    out = cli.run(flags)
    assert out.returncode == 0, out.stderr[-3000:]
    (moved,) = os.listdir(workdir / "damaged_checkpoints")
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith(
        "warning: checkpoint 4 cannot be read (ValueError: OUT_OF_RANGE: Error reading"
    )
    assert f"moved to damaged_checkpoints/{moved}, trying the previous one" in lines[0]
    assert "resumed from" in out.stdout and "at step 2" in out.stdout


def test_a_failed_read_is_named_by_its_innermost_cause_even_without_a_message():
    from vit_jax.checkpoint.orbax_reads import failure_reason

    wrapper = Exception("Encountered error while reading array index: (slice(0, 4, 1),). See")
    wrapper.__cause__ = ValueError('OUT_OF_RANGE: Error reading "params.head.kernel/0.0"\nmore')
    assert (
        failure_reason(wrapper)
        == 'ValueError: OUT_OF_RANGE: Error reading "params.head.kernel/0.0"'
    )
    silent = Exception("wrapper")
    silent.__cause__ = TimeoutError()
    assert failure_reason(silent) == "TimeoutError: TimeoutError()"


def test_when_no_checkpoint_can_be_read_the_run_stops_instead_of_starting_afresh(
    digits_dir, tmp_path
):
    config = tiny_config(digits_dir, total_steps=2, keep_checkpoints=1)
    workdir = tmp_path / "run"
    train_and_evaluate(config, str(workdir))
    _damage(workdir / "checkpoints" / "2", "no manifest")
    with pytest.raises(UnreadableCheckpointError, match="checkpoint 2 .* cannot be read") as e:
        train_and_evaluate(config, str(workdir))
    assert os.path.isdir(workdir / "checkpoints" / "2")  # left in place, not deleted
    assert "damaged checkpoints are in" not in str(e.value)  # no such folder to point at


def test_a_full_disk_under_metrics_stops_the_run_with_one_message_naming_the_file(
    digits_dir, tmp_path
):
    import time

    from vit_jax.train.stopping import WorkdirWriteError

    workdir = tmp_path / "run"
    workdir.mkdir()
    os.symlink("/dev/full", workdir / "metrics.jsonl")  # every write: ENOSPC
    began = time.monotonic()
    with pytest.raises(WorkdirWriteError, match="cannot write .*metrics.jsonl .*free disk space"):
        train_and_evaluate(tiny_config(digits_dir), str(workdir))
    assert time.monotonic() - began < 60  # no hang


def test_a_failing_tensorboard_write_raises_instead_of_hanging(digits_dir, tmp_path, monkeypatch):
    import errno

    from tensorboardX.event_file_writer import EventsWriter

    from vit_jax.train.stopping import WorkdirWriteError

    calls = []

    def full_after_a_few(self, event):
        calls.append(event)
        if len(calls) > 20:  # 6 scalars a step: fails while logging step 4
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(EventsWriter, "write_event", full_after_a_few)
    workdir = tmp_path / "run"
    with pytest.raises(WorkdirWriteError, match="tensorboard .*No space left on device"):
        train_and_evaluate(tiny_config(digits_dir), str(workdir))
    assert os.path.isdir(workdir / "checkpoints" / "2")  # earlier checkpoints intact


def test_a_logged_window_averages_the_metrics_but_gives_the_last_learning_rate():
    """The learning rate is a schedule, read at the logged step: then a window that a resume
    cut short logs the value an uninterrupted run logs there."""
    from vit_jax.train.reporting import PendingMetrics

    pending = PendingMetrics(float, step=10, batch_size=4)
    for i in range(3):
        pending.add(
            {"loss": 1.0 + i, "accuracy": 0.5, "learning_rate": 0.1 * (i + 1), "finite": True}
        )
    means, _ = pending.flush(13, stop=True)
    assert means["loss"] == 2.0 and means["learning_rate"] == pytest.approx(0.3)


def test_a_logged_window_counts_training_time_only(monkeypatch):
    """Images per second and data wait leave out what `aside` holds (evaluations, saves), and a
    fetch counts as waiting for data only if the previous step had finished: while it still
    ran (steps are dispatched asynchronously) the devices were not waiting. A fake clock."""
    from vit_jax.train import reporting

    now = [100.0]
    monkeypatch.setattr(reporting.time, "perf_counter", lambda: now[0])

    class Step:  # a step's output: finished or still running
        def __init__(self, ready):
            self.ready = ready

        def is_ready(self):
            return self.ready

    pending = reporting.PendingMetrics(float, step=0, batch_size=4)
    pending.add({"loss": 1.0, "finite": True})
    now[0] += 0.2  # training
    with pending.aside({"loss": 1.0}):
        now[0] += 0.5  # an evaluation
    pending.waited(0.1, previous=None)  # no step before: the devices idled
    means, img_per_sec = pending.flush(1, stop=True)
    assert img_per_sec == pytest.approx(4 / 0.2) and means["data_wait"] == pytest.approx(0.5)
    pending.add({"loss": 1.0, "finite": True})
    now[0] += 1.0
    pending.waited(0.3, previous={"loss": Step(ready=False)})  # it still ran: not waiting
    pending.waited(0.1, previous={"loss": Step(ready=True)})  # it had finished: waiting
    means, img_per_sec = pending.flush(2, stop=True)
    assert img_per_sec == pytest.approx(4.0) and means["data_wait"] == pytest.approx(0.1)
    assert pending.aside_seconds == pytest.approx(0.5)  # the run's total, for its summary


def test_tensorboard_events_hold_the_scalars_and_mark_a_resume(tmp_path, capfd, caplog):
    import struct

    from tensorboardX.proto import event_pb2

    metrics = {"loss": 1.5, "accuracy": 0.5, "learning_rate": 1e-3, "grad_norm": 2.0}
    for start in (0, 3):
        reporter = Reporter(str(tmp_path), total_steps=10, start_step=start)
        reporter.train(start + 1, metrics, 10.0)
        reporter.train(start + 2, {**metrics, "loss": float("nan")}, 10.0)  # a skipped step
        reporter.close()
    assert "NaN" not in capfd.readouterr().err + caplog.text  # written as is, no warning line
    events = []
    for name in sorted(os.listdir(tmp_path / "tensorboard")):
        blob = (tmp_path / "tensorboard" / name).read_bytes()
        while blob:  # TFRecord: length, crc, data, crc
            (length,) = struct.unpack("<Q", blob[:8])
            events.append(event_pb2.Event.FromString(blob[12 : 12 + length]))
            blob = blob[12 + length + 4 :]
    scalars = {(e.step, v.tag): v.simple_value for e in events for v in e.summary.value}
    assert scalars[(1, "train/loss")] == 1.5 and scalars[(4, "train/grad_norm")] == 2.0
    assert np.isnan(scalars[(5, "train/loss")]) and scalars[(5, "train/accuracy")] == 0.5
    assert any(e.session_log.status == event_pb2.SessionLog.START and e.step == 3 for e in events)


@pytest.mark.slow
def test_the_fault_injection_harness_finds_nothing_broken(digits_dir, tmp_path):
    import importlib.util

    path = os.path.join(
        os.path.dirname(os.path.dirname(__file__)), "benchmarks", "fault_injection.py"
    )
    spec = importlib.util.spec_from_file_location("fault_injection", path)
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    counts = harness.main(
        [
            "--runs=1",
            "--kills=2",
            "--damages=1",
            "--steps=30",
            f"--out={tmp_path}",
            f"--data_dir={digits_dir}",
            "--seed=3",
        ]
    )
    assert counts["kills"] >= 1 and counts["resumes"] >= 1
    for broken in (
        "steps_lost_after_sigterm",
        "loss_mismatches",
        "damaged_restored",
        "failed_to_resume",
        "tracebacks",
    ):
        assert counts[broken] == 0, (broken, counts)


@pytest.fixture
def small_disk(tmp_path):
    """A 900 KiB tmpfs: room for a checkpoint of the tiny model, not for three."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=900k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_disk_that_fills_during_a_checkpoint_save_is_one_message_and_status_4(
    digits_dir, small_disk
):
    import time

    from tests import cli

    flags = cli.tiny_digits_flags(
        digits_dir, small_disk / "run", 40, checkpoint_every_steps=5, keep_checkpoints=20
    )
    began = time.monotonic()
    result = cli.run(flags, timeout=120)
    assert result.returncode == stopping.IO_ERROR == 4, result.stderr[-2000:]
    lines = result.stderr.splitlines()  # not Orbax's and TensorStore's tracebacks too
    assert len(lines) == 1, result.stderr[-3000:]
    (line,) = lines
    assert line.startswith("error: cannot write ") and "(No space left on device)" in line
    assert time.monotonic() - began < 60
    assert os.path.isdir(small_disk / "run" / "checkpoints" / "5")  # earlier ones intact


def test_only_the_write_failures_the_run_reports_itself_are_dropped_from_the_logs():
    """Out of space for a file of the workdir: the run's own line says it. Everything else,
    permission errors and other folders included, is still logged."""
    import errno
    import logging

    def record(error, level=logging.ERROR):
        info = (type(error), error, None) if error else None
        return logging.LogRecord("absl", level, "f.py", 1, "failed", None, info)

    def tensorstore(path, code):
        return ValueError(
            f"RESOURCE_EXHAUSTED: Failed writing: \"{path}\" [os_error_code='{code}']"
        )

    full = tensorstore("/w/run/checkpoints/5/x", errno.ENOSPC)
    wrapped = RuntimeError("commit failed")
    wrapped.__cause__ = full
    keep = stopping.ReportedWriteErrors("/w/run").filter
    assert not keep(record(full)) and not keep(record(wrapped))
    quota = OSError(errno.EDQUOT, "Disk quota exceeded", "/w/run/metrics.jsonl")
    assert not keep(record(quota))
    assert not keep(record(OSError(errno.ENOSPC, "No space left on device")))  # a write's own
    assert keep(record(tensorstore("/elsewhere/x", errno.ENOSPC)))  # not the run's file
    assert keep(record(tensorstore("/w/run/x", errno.EACCES)))  # not for want of space
    assert keep(record(FileNotFoundError(errno.ENOENT, "No such file", "/w/run/x")))
    assert keep(record(full, logging.WARNING))
    assert keep(record(ValueError("a shape mismatch"))) and keep(record(None))


def test_a_checkpoint_save_that_hangs_ends_the_run_instead_of_hanging(digits_dir, tmp_path):
    import subprocess
    import sys
    import time

    from tests import cli

    flags = cli.tiny_digits_flags(
        digits_dir,
        tmp_path / "run",
        20,
        checkpoint_every_steps=5,
        checkpoint_timeout_minutes=0.05,  # 3 s
    )
    hang = (
        "import sys, time\n"
        "import vit_jax.checkpoint.manager as m\n"
        "m.save = lambda *a, **k: time.sleep(600)  # a save that never returns\n"
        "from vit_jax.main import main\n"
        "main(['vit_jax.main', *sys.argv[1:]])\n"
    )
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", hang, *flags],
        env=cli.env(1),
        cwd=cli.ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == stopping.FAULT == 1
    assert (
        "error: the checkpoint save in" in result.stderr
        and "did not finish within 3 s" in result.stderr
    )
    assert time.monotonic() - began < 60


def test_an_uncommitted_save_is_never_restored_and_is_cleaned_up(digits_dir, tmp_path):
    config = tiny_config(digits_dir, total_steps=6, keep_checkpoints=3)
    workdir = tmp_path / "run"
    train_and_evaluate(config, str(workdir))
    # What a kill during the save of step 8 leaves: a complete-looking but uncommitted copy.
    shutil.copytree(
        workdir / "checkpoints" / "6", workdir / "checkpoints" / "8.orbax-checkpoint-tmp"
    )
    summary = train_and_evaluate(
        tiny_config(digits_dir, total_steps=8, keep_checkpoints=3), str(workdir)
    )
    assert summary["step"] == 8
    assert 7 in losses_by_step(workdir)  # resumed from 6, not from the uncommitted 8
    assert not [d for d in os.listdir(workdir / "checkpoints") if "tmp" in d]


@pytest.mark.parametrize("dst", ["out", "out.NPZ"])
def test_a_conversion_that_cannot_be_written_is_one_line_status_4_and_leaves_nothing(tmp_path, dst):
    """vit-convert under a file-size limit (as a full disk): the file named in one error line,
    status 4 (IO_ERROR), no half-written destination."""
    import subprocess
    import sys

    from tests.conftest import random_params
    from vit_jax import checkpoint, models

    model = models.create("Ti/4", num_classes=10, image_size=16, **{**SMALL, "hidden_size": 64})
    src = tmp_path / "src"
    checkpoint.save_orbax_params(src, random_params(model))
    convert = [sys.executable, "-m", "vit_jax.tools.convert", str(src), str(tmp_path / dst)]
    result = subprocess.run(  # at most 20 KiB per file
        ["bash", "-c", 'ulimit -f 20 && exec "$@"', "convert", *convert],
        env=cli.env(1), cwd=cli.ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == stopping.IO_ERROR, result.stderr[-2000:]
    # (Orbax's writer threads may print their own tracebacks around it: a known leftover)
    line = result.stderr[result.stderr.index(f"error: cannot write {tmp_path / dst}") :]
    line = line.splitlines()[0]
    assert "(File too large)" in line and "workdir" not in line  # a conversion's advice
    assert sorted(os.listdir(tmp_path)) == ["src"]
