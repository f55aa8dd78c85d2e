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
        _probe(path)
    except OSError as e:
        raise ValueError(f"{name}={path!r} cannot be written ({e.strerror or e}): {fix}.") from None
    return path


def check_creatable(path: str) -> None:
    """Raises ValueError unless `path`, a file or folder still to be written, can be made there:
    no file stands where a folder above it must be, and the nearest existing folder above it
    takes a new file. Makes nothing."""
    folder = os.path.dirname(os.path.abspath(os.path.expanduser(path)))
    while not os.path.isdir(folder):
        if os.path.exists(folder):
            raise ValueError(f"cannot write {path}: {folder} is a file, not a directory.")
        folder = os.path.dirname(folder)
    try:
        _probe(folder)
    except OSError as e:
        raise ValueError(
            f"cannot write {path}: {folder} takes no new files ({e.strerror or e}); choose "
            "another destination."
        ) from None


def _probe(folder: str) -> None:
    """Makes and removes a nameless file in `folder`; raises OSError if it cannot."""
    with tempfile.TemporaryFile(dir=folder):
        pass


__all__ = ["check_creatable", "writable_folder"]
