"""Several hosts, simulated by two local processes joined with jax.distributed on localhost."""

import signal
import subprocess
import time

import portpicker
import pytest

from tests import cli
from tests.conftest import eval_records, losses_by_step

pytestmark = pytest.mark.slow
LAYOUTS = {  # 2 processes x 4 devices
    "fsdp": {"mesh.fsdp": 8, "mesh.data": 1, "sharding.fsdp_min_size_mb": 0},
    "pmap": {"parallel": "pmap"},
}


def start(digits_dir, workdir, port: int, index: int, steps: int, *extra, **overrides):
    flags = cli.tiny_digits_flags(digits_dir, workdir, steps, **overrides)
    flags += [f"--coordinator=localhost:{port}", "--num_processes=2", f"--process_id={index}"]
    return subprocess.Popen(
        cli.main_command(flags + list(extra)),
        env=cli.env(4),
        cwd=cli.ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("layout", ["fsdp", "pmap"])
def test_two_processes_train_like_one_and_evaluate_the_whole_split(tmp_path, layout, digits_dir):
    workdir = tmp_path / "run"
    port = portpicker.pick_unused_port()
    procs = [start(digits_dir, workdir, port, i, 20, **LAYOUTS[layout]) for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "over 8 devices" in outputs[0][0]
    assert "| loss" in outputs[0][0] and "| loss" not in outputs[1][0]  # process 0 reports
    losses = losses_by_step(workdir)
    assert sorted(losses) == list(range(1, 21))
    final = eval_records(workdir)[-1]
    assert final["num_examples"] == 297  # each process evaluated its shard; nothing dropped

    if layout == "fsdp":  # the data order and the step do not depend on the topology
        alone = tmp_path / "one_process"
        flags = cli.tiny_digits_flags(digits_dir, alone, 20, **LAYOUTS[layout])
        reference = cli.run(flags, num_devices=8)
        assert reference.returncode == 0, reference.stderr[-3000:]
        one = losses_by_step(alone)
        assert [one[s] for s in range(1, 21)] == pytest.approx(
            [losses[s] for s in range(1, 21)], rel=1e-4
        )

    # The checkpoint the two processes wrote together restores in a single process on one
    # device, whose evaluation of it (no further steps) gives the same accuracy.
    single = cli.run(cli.tiny_digits_flags(digits_dir, workdir, 20), num_devices=1)
    assert single.returncode == 0, single.stderr[-3000:]
    again = eval_records(workdir)[-1]
    assert again["num_examples"] == 297
    assert again["accuracy"] == pytest.approx(final["accuracy"], abs=1e-9)
    assert again["loss"] == pytest.approx(final["loss"], rel=1e-5)


def test_an_unreachable_coordinator_is_one_message_not_a_hang(tmp_path, digits_dir):
    port = portpicker.pick_unused_port()  # nobody listens there
    began = time.monotonic()
    proc = start(digits_dir, tmp_path / "run", port, 1, 5, "--distributed_timeout=3")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2  # a user error (vit_jax/train/stopping.py)
    assert f"error: the coordinator localhost:{port} cannot be reached" in err
    assert "Traceback" not in err and time.monotonic() - began < 60


def test_when_a_process_dies_the_other_stops_with_an_error(tmp_path, digits_dir):
    port = portpicker.pick_unused_port()
    procs = [
        start(digits_dir, tmp_path / "run", port, i, 100_000, "--heartbeat_timeout=10")
        for i in range(2)
    ]
    try:
        for line in procs[0].stdout:  # training has started on both
            if line.startswith("step"):
                break
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        procs[0].wait(timeout=60)
        assert procs[0].returncode != 0
        assert time.monotonic() - killed_at < 60
    finally:
        for p in procs:
            p.kill()
            p.communicate()


def test_sigterm_to_one_process_saves_every_process_at_the_same_step(tmp_path, digits_dir):
    import os

    workdir = tmp_path / "run"
    port = portpicker.pick_unused_port()
    procs = [start(digits_dir, workdir, port, i, 100_000) for i in range(2)]
    try:
        for line in procs[0].stdout:
            if line.startswith("step") and int(line.split()[1].split("/")[0]) >= 30:
                break
        procs[1].send_signal(signal.SIGTERM)  # one process only: they must agree on the step
        for p in procs:
            p.wait(timeout=120)
        assert [p.returncode for p in procs] == [75, 75]
        saved = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
        logged = max(losses_by_step(workdir))
        assert saved[-1] == logged  # the step both stopped at, saved: no step lost
    finally:
        for p in procs:
            p.kill()
            p.communicate()
