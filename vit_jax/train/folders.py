"""Folders a run writes into (the workdir, the compilation cache, a benchmark's outputs): made
if missing and checked to take a file at the start, so that a folder that cannot be written is
one message before any expensive work, not a traceback after it; and a run's hold on its
workdir (`held`), so that two runs never write into one."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile


def writable_folder(path: str, name: str, fix: str) -> str:
    """`path` ("~" expanded) as an absolute path, made if missing. Raises ValueError, "{name}=
    {path!r} cannot be written (why): {fix}.", if it cannot be made or takes no new file (a
    file in its place, no permission, a read-only disk)."""
    path = os.path.abspath(os.path.expanduser(path))
    above = path
    while not os.path.isdir(above) and above != os.path.dirname(above):
        if os.path.exists(above):
            raise ValueError(
                f"{name}={path!r} cannot be written: {above} is a file, not a directory: {fix}."
            )
        above = os.path.dirname(above)
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


def first_missing(path: str) -> str | None:
    """The outermost folder of `path` ("~" expanded) that does not exist yet, the one a run
    creating `path` would create first; None if `path` exists."""
    path, missing = os.path.abspath(os.path.expanduser(path)), None
    while not os.path.exists(path) and path != os.path.dirname(path):
        path, missing = os.path.dirname(path), path
    return missing


def held_message(folder: str) -> str:
    return (
        f"another run is training in {folder}: wait for it to end, or give this run another "
        "--workdir."
    )


@contextlib.contextmanager
def held(folder: str, *, enabled: bool = True):
    """Holds an exclusive lock on the existing `folder` (flock(2) on the directory itself: no
    file is made) while the block runs; raises ValueError at once if another process holds it.
    flock guards the processes of one machine (on NFS another client may not see it); a file
    system without locks goes unguarded. `enabled=False` holds nothing."""
    if not enabled:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(held_message(folder)) from None
        except OSError:
            pass  # no locks here: unguarded
        yield
    finally:
        os.close(fd)  # releases the lock


def _probe(folder: str) -> None:
    """Makes and removes a nameless file in `folder`; raises OSError if it cannot."""
    with tempfile.TemporaryFile(dir=folder):
        pass


__all__ = ["check_creatable", "held", "held_message", "writable_folder"]
