"""Where a run came from: WORKDIR/provenance.jsonl gets one line each time a run starts (or
resumes), with the command line, the package versions, the git commit of the code, and the
devices and topology it ran on."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import socket
import subprocess
import sys

import jax

import vit_jax

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")


def versions() -> dict[str, str | None]:
    """The version of the running vit_jax and the installed version of each of PACKAGES (None
    if absent)."""
    found = {"vit_jax": vit_jax.__version__}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_commit() -> str | None:
    """The commit of the checkout this package runs from ("...-dirty" with local changes), or
    None outside a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        run = lambda *args: subprocess.run(  # noqa: E731
            ["git", "-C", here, *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        commit = run("rev-parse", "HEAD")
        return commit + ("-dirty" if run("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def describe() -> dict:
    """This process's run: time, command line, versions, commit, devices and topology."""
    device = jax.devices()[0]
    return {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": sys.argv,
        "host": socket.gethostname(),
        "versions": versions(),
        "git_commit": git_commit(),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
    }


def record(workdir: str) -> None:
    """Appends `describe()` to WORKDIR/provenance.jsonl (process 0 only)."""
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "provenance.jsonl"), "a") as f:
            f.write(json.dumps(describe()) + "\n")
