"""A run killed with SIGKILL after a checkpoint, or stopped with SIGTERM at any moment, resumes
exactly where it would have been."""

import os
import signal
import subprocess
import time

import numpy as np
import pytest

from tests import cli
from tests.conftest import eval_records, losses_by_step

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_or_stopped_run_resumes_with_the_losses_of_an_uninterrupted_run(
    tmp_path, digits_dir, sig
):
    steps = 200
    reference = tmp_path / "reference"
    done = cli.run(cli.tiny_digits_flags(digits_dir, reference, steps))
    assert done.returncode == 0, done.stderr[-2000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        cli.main_command(cli.tiny_digits_flags(digits_dir, killed, steps)),
        env=cli.env(1),
        cwd=cli.ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while not os.path.isdir(killed / "checkpoints" / "50") and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, sig)
    proc.wait()
    before = losses_by_step(killed)
    assert 50 <= max(before) < steps, "the run must be stopped mid-training, after step 50"
    if sig == signal.SIGTERM:  # saved at the next step boundary, told the scheduler so
        assert proc.returncode == 75
        assert os.path.isdir(killed / "checkpoints" / str(max(before)))  # no step lost
    # (the resumed run drops the records of steps after its checkpoint: each step once)

    resumed = cli.run(cli.tiny_digits_flags(digits_dir, killed, steps))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    expected, got = losses_by_step(reference), losses_by_step(killed)
    assert sorted(got) == sorted(expected) == list(range(1, steps + 1))
    np.testing.assert_allclose([got[s] for s in expected], list(expected.values()), rtol=1e-4)
    assert eval_records(killed)[-1]["accuracy"] == eval_records(reference)[-1]["accuracy"]
