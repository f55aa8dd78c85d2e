"""Several hosts, simulated by two local processes joined with jax.distributed on localhost."""

import subprocess

import portpicker
import pytest

from tests import cli
from tests.conftest import eval_records, losses_by_step

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("strategy", ["jit", "pmap"])
def test_two_processes_train_together_and_evaluate_the_whole_split(tmp_path, strategy, digits_dir):
    workdir = tmp_path / "run"
    port = portpicker.pick_unused_port()
    procs = [
        subprocess.Popen(
            cli.main_command(
                cli.tiny_digits_flags(digits_dir, workdir, 20, parallel=strategy)
                + [f"--coordinator=localhost:{port}", "--num_processes=2", f"--process_id={i}"]
            ),
            env=cli.env(2),
            cwd=cli.ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert f"over 4 devices ({strategy})" in outputs[0][0]
    assert "| loss" in outputs[0][0] and "| loss" not in outputs[1][0]  # process 0 reports
    losses = losses_by_step(workdir)
    assert sorted(losses) == list(range(1, 21))
    final = eval_records(workdir)[-1]
    assert final["num_examples"] == 297  # each process evaluated its shard; nothing dropped

    # The checkpoint the two processes wrote together restores in a single process, whose
    # evaluation of it (no further steps) gives the same accuracy over the same 297 examples.
    single = cli.run(cli.tiny_digits_flags(digits_dir, workdir, 20), num_devices=1)
    assert single.returncode == 0, single.stderr[-3000:]
    again = eval_records(workdir)[-1]
    assert again["num_examples"] == 297
    assert again["accuracy"] == pytest.approx(final["accuracy"], abs=1e-9)
    assert again["loss"] == pytest.approx(final["loss"], rel=1e-5)
