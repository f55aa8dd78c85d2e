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

GLIBC = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="host_memory='keep' needs glibc's malloc"
)

# The policy of argv[1] chosen first, as vit-train does, then the page faults of 22 calls of a
# jitted function whose 64 MiB temporary XLA:CPU allocates afresh at every call (mmap'ed and
# unmapped by glibc by default).
FAULTS_PER_CALL = """
import resource, sys
from vit_jax.train import host_memory
host_memory.apply(sys.argv[1])
import jax, jax.numpy as jnp
f = jax.jit(lambda x, w, v: jnp.tanh(x @ w) @ v)
x, w, v = jnp.ones((16384, 8)), jnp.ones((8, 1024)) / 8, jnp.ones((1024, 4))
assert f.lower(x, w, v).compile().memory_analysis().temp_size_in_bytes >= 64 * 2**20
faults = []
for _ in range(22):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x, w, v).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
host_memory.apply(sys.argv[1])  # again, JAX started: the settings are made, nothing refused
print(*faults)
"""


def faulting_calls(policy: str) -> int:
    """How many of 20 calls (after two) page-fault more than 16 pages, in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_CALL, policy],
        env=cli.env(1),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cli.ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    faults = [int(n) for n in result.stdout.split()[-20:]]
    return sum(n > 16 for n in faults)  # 16 pages: 64 KiB, or 32 MiB in huge pages


@GLIBC
def test_keep_stops_the_temporaries_page_faulting_at_every_call():
    # With `keep` the heap still grows now and then while it settles (a small block in the
    # hole the temporary left), so a few calls may fault; by default every call does.
    assert faulting_calls("system") >= 18
    assert faulting_calls("keep") <= 6


@GLIBC
def test_vit_train_chooses_it_before_anything_starts_threads():
    result = cli.run(["--config=digits", "--host_memory=keep", "--show_config"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "host_memory" not in result.stderr


def threads_have_arenas() -> bool:
    """Whether this (test) process has several malloc arenas: JAX's threads made them, unless
    the environment held malloc to one (GLIBC_TUNABLES, MALLOC_ARENA_MAX)."""
    jax.devices()
    return platform.libc_ver()[0] == "glibc" and host_memory.malloc_arenas() > 1


def test_keep_once_threads_have_arenas_is_refused_with_the_fix(capsys):
    if not threads_have_arenas():
        pytest.skip("this process has one malloc arena: nothing to refuse")
    with pytest.raises(ValueError, match="before any other thread allocates.*GLIBC_TUNABLES"):
        host_memory.keep_freed_memory()
    try:  # vit-train applies it first: one line, the user-error status
        with pytest.raises(SystemExit) as exit_:
            main.main(["vit-train", "--config=digits", "--host_memory=keep", "--show_config"])
    finally:
        main.FLAGS.unparse_flags()  # absl's flags are global: leave them as found
    assert exit_.value.code == stopping.USER_ERROR
    assert "error: host_memory='keep' must be chosen before" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is not one of"):
        host_memory.apply("sometimes")
    host_memory.apply("system")  # changes nothing, at any time
