"""`--host_memory=keep`: a step's freed host memory is reused by the next step instead of being
page-faulted in again (vit_jax/train/host_memory.py)."""

import platform
import subprocess
import sys

import jax
import pytest

from tests import cli
from vit_jax import main
from vit_jax.train import host_memory, stopping

# The policy of argv[2] chosen first, as vit-train does, then a run's set-up (the dataset's
# threads, JAX's backend), then the page faults of a jitted function whose 64 MiB temporary
# XLA:CPU allocates afresh at every call (mmap'ed and unmapped by glibc by default).
FAULTS_AFTER_SET_UP = """
import resource, statistics, sys
from vit_jax.train import host_memory
host_memory.apply(sys.argv[2])
from tests.conftest import tiny_config
from vit_jax.train import loop
loop.set_up(tiny_config(sys.argv[1]), sys.argv[3])
host_memory.apply(sys.argv[2])  # again, JAX started: the settings are made, nothing to refuse
import jax, jax.numpy as jnp
f = jax.jit(lambda x, w, v: jnp.tanh(x @ w) @ v)
x, w, v = jnp.ones((16384, 256)), jnp.ones((256, 1024)) / 256, jnp.ones((1024, 4))
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x, w, v).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
assert f.lower(x, w, v).compile().memory_analysis().temp_size_in_bytes >= 64 * 2**20
print(statistics.median(faults[1:]))
"""


def faults_per_call(policy: str, data_dir, workdir) -> float:
    """The median page faults of a call after the first, in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-c", FAULTS_AFTER_SET_UP, str(data_dir), policy, str(workdir)],
        env=cli.env(1),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cli.ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return float(result.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="host_memory='keep' is glibc's")
def test_keep_stops_the_temporaries_page_faulting_at_every_call(digits_dir, tmp_path):
    system = faults_per_call("system", digits_dir, tmp_path / "system")
    keep = faults_per_call("keep", digits_dir, tmp_path / "keep")
    assert system > 64 * 2**20 / 4096 / 2  # at least half the temporary's 4 KiB pages
    assert keep < system / 100


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="host_memory='keep' is glibc's")
def test_keep_once_threads_have_arenas_is_refused_with_the_fix(capsys):
    jax.devices()  # this test process's backend has started: its threads have their arenas
    with pytest.raises(ValueError, match="before any other thread allocates.*right after a"):
        host_memory.keep_freed_memory()
    with pytest.raises(SystemExit) as exit_:  # vit-train applies it first: one line, status 2
        main.main(["vit-train", "--config=digits", "--host_memory=keep", "--show_config"])
    assert exit_.value.code == stopping.USER_ERROR
    assert "error: host_memory='keep' must be chosen before" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is not one of"):
        host_memory.apply("sometimes")
    host_memory.apply("system")  # changes nothing, at any time
