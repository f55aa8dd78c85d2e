"""Folders a run writes into (the workdir, the compilation cache, a benchmark's outputs): made
if missing and checked to take a file at the start, so that a folder that cannot be written is
one message before any expensive work, not a traceback after it."""

from __future__ import annotations

import os
import tempfile


def writable_folder(path: str, name: str, fix: str) -> str:
    """`path` ("~" expanded) as an absolute path, made if missing. Raises ValueError, "{name}=
    {path!r} cannot be written (why): {fix}.", if it cannot be made or takes no new file (a
    file in its place, no permission, a read-only disk)."""
    path = os.path.abspath(os.path.expanduser(path))
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ValueError(f"{name}={path!r} cannot be written ({e.strerror or e}): {fix}.") from None
    return path


__all__ = ["writable_folder"]
