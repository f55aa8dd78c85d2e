"""How a run ends, and how a scheduler can tell: exit statuses, stop signals, divergence.

Exit statuses of `python -m vit_jax.main`:

    0   COMPLETED   trained to total_steps and evaluated
    1   FAULT       an unexpected error (a traceback is printed): also a ValueError that JAX,
                    Flax or another library raises while training (`caused_by_user`)
    2   USER_ERROR  the config, data or checkpoint cannot work (one `error: ...` line)
    3   DIVERGED    a loss or gradient norm became non-finite (nonfinite='stop'); the newest
                    checkpoint holds the last finite state
    4   IO_ERROR    a file of the workdir could not be written (disk full, permission denied);
                    the message names it; earlier checkpoints are intact
    75  PREEMPTED   SIGTERM or SIGINT: a checkpoint was saved at the next step boundary; rerun
                    the same command to resume exactly

Stop signals: in a run of one process, SIGTERM and SIGINT set a flag that the loop reads at each
step boundary (`StopSignals`). Processes of a multi-process run must stop at the same step, so
there Orbax's preemption sync point decides (JAX's distributed preemption notifier catches
SIGTERM on any process and the processes agree on the step).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import sys
import threading

import jax
import jax.numpy as jnp

from vit_jax.train.statuses import (  # noqa: F401 (the statuses, read from here too)
    COMPLETED,
    DIVERGED,
    FAULT,
    IO_ERROR,
    PREEMPTED,
    SIGNALS,
    USER_ERROR,
)


def write_error(error: WorkdirWriteError) -> int:
    """Prints `error: cannot write FILE (...)` on one line to stderr and returns IO_ERROR. On a
    command line (stderr is the process's own, not a notebook's or a test's capture) stderr
    then goes to /dev/null for the rest of the process, which is about to exit: the writer
    threads of a failed Orbax save (TensorStore's callbacks into a closed event loop) would
    otherwise print their tracebacks after that line."""
    print(f"error: {error.strerror or error}", file=sys.stderr, flush=True)
    if sys.stderr is sys.__stderr__:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
        except (OSError, ValueError):  # io.UnsupportedOperation is a ValueError
            pass
    return IO_ERROR


def user_error(error: Exception) -> int:
    """Prints `error: ...` (the message says what to fix; no traceback) on one line to stderr;
    returns USER_ERROR, the exit status of every command for a mistake a user can make."""
    print(f"error: {error}", file=sys.stderr)
    return USER_ERROR


def caused_by_user(error: BaseException) -> bool:
    """Whether `error` is a mistake its message lets a user fix: a FileNotFoundError, one of
    vit_jax's own ValueError types, or a ValueError raised in vit_jax's code (its checks of
    configs, data and checkpoints say what is wrong and how to fix it; so do the library
    errors it wraps, such as tfds's about a dataset name or split). A ValueError raised
    inside the Python code of JAX, Flax, NumPy or another library while the run trains is a
    fault of the program, not of the config: it gets a traceback and the FAULT status, which
    a bug report needs and a scheduler may retry. (A C function's error, such as NumPy's
    reshape called from vit_jax, counts as raised where it was called.)"""
    if isinstance(error, FileNotFoundError):
        return True
    if not isinstance(error, ValueError):
        return False
    if type(error).__module__.split(".")[0] == "vit_jax":  # one of our own error types,
        return True  # wherever re-raised (a loader worker's error crosses into grain's code)
    frame = error.__traceback__
    if frame is None:  # made, never raised: nothing says where from
        return True
    while frame.tb_next is not None:
        frame = frame.tb_next
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return _inside(frame.tb_frame.f_code.co_filename, package)


def _inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies under it (both made absolute)."""
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return os.path.commonpath([folder, path]) == folder


class DivergedError(RuntimeError):
    """A non-finite loss, gradient norm or state; the message names the step and the value."""


class WorkdirWriteError(OSError):
    """A file of the workdir cannot be written (disk full, permission denied, ...)."""


RESUME_FIX = (
    "free disk space or fix the permissions of the workdir, then rerun the same command to "
    "resume from the last checkpoint"
)


@contextlib.contextmanager
def writing(path: str, fix: str = RESUME_FIX):
    """Turns a failed write under `path` into one WorkdirWriteError naming the file and `fix`
    (raised in the caller's thread: nothing waits on a dead writer). OSErrors count, and the
    ValueErrors in which TensorStore (Orbax's writer) reports an OS error code."""
    try:
        yield
    except WorkdirWriteError:
        raise
    except (OSError, ValueError) as e:
        code = _os_error_code(e)
        if code is None:
            raise
        raise WorkdirWriteError(
            code,
            f"cannot write {_failed_file(e) or path} ({os.strerror(code)}): {fix}",
        ) from e


def report_write_errors_once(workdir: str) -> None:
    """At the command line, running out of space under `workdir` is one `error: cannot write
    ...` line (`write_error`), not that line after what Orbax's writer threads print about the
    same failure: their absl error logs with tracebacks (`ReportedWriteErrors`), and
    TensorStore's callbacks that arrive after Orbax closed its event loop, which Python
    reports as unraisable "Event loop is closed" errors. Anything else still prints. Calling
    it again (another run in the same process) replaces the workdir."""
    absl_logger = logging.getLogger("absl")
    for old in [f for f in absl_logger.filters if isinstance(f, ReportedWriteErrors)]:
        absl_logger.removeFilter(old)
    absl_logger.addFilter(ReportedWriteErrors(workdir))
    if getattr(sys.unraisablehook, "drops_late_writer_callbacks", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        late = isinstance(unraisable.exc_value, RuntimeError) and (
            str(unraisable.exc_value) == "Event loop is closed"
        )
        if not late:
            previous(unraisable)

    hook.drops_late_writer_callbacks = True
    sys.unraisablehook = hook


OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class ReportedWriteErrors(logging.Filter):
    """A filter for absl's logger that drops the error records, each with its traceback, in
    which Orbax's writer threads report that a file under `workdir` (or one they do not name)
    could not be written for want of space (disk full, quota, file too large): the run
    reports the same failure itself, once, as WorkdirWriteError (`writing`). Every other
    record passes: warnings, errors without a traceback, permission errors, files named
    elsewhere."""

    def __init__(self, workdir: str):
        super().__init__()
        self.workdir = os.path.abspath(os.path.expanduser(workdir))

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if record.levelno < logging.ERROR:
            return True
        for _ in range(16):  # the error and the ones it was raised from
            if error is None:
                return True
            file = _failed_file(error)  # a write's own error often names none
            if _os_error_code(error) in OUT_OF_SPACE and (
                file is None or _inside(file, self.workdir)
            ):
                return False
            error = error.__cause__ or error.__context__
        return True


def _failed_file(error: Exception) -> str | None:
    """The file a failed write names: an OSError's filename, or the one in a TensorStore error
    ('... Failed writing: "/path/..." ...')."""
    if isinstance(error, OSError) and error.filename:
        return os.fsdecode(error.filename)
    match = re.search(r'Failed (?:writing|to write)[^"]*"([^"]+)"', str(error))
    return match.group(1) if match else None


def _os_error_code(error: Exception) -> int | None:
    """The errno of an OSError, or of a TensorStore error ("... [os_error_code='28']")."""
    if isinstance(error, OSError):
        return error.errno or errno.EIO
    match = re.search(r"os_error_code='(\d+)'", str(error))
    return int(match.group(1)) if match else None


@contextlib.contextmanager
def deadline(seconds: float, what: str):
    """Ends the process with FAULT and one message if the block runs longer than `seconds`
    (0: no limit). For waits that nothing else would end, such as a checkpoint save that
    hangs in a background thread: a run that stops can be rerun; a hung one holds its
    machines forever."""
    if not seconds:
        yield
        return

    def expire() -> None:
        print(
            f"error: {what} did not finish within {seconds:.0f} s; the run stops (status "
            f"{FAULT}) instead of hanging. Rerun the same command to resume from the last "
            "complete checkpoint.",
            file=sys.stderr,
            flush=True,
        )
        os._exit(FAULT)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


class StopSignals:
    """While entered (in the main thread), SIGTERM and SIGINT stop the run at a step boundary
    instead of killing the process; the previous handlers come back on exit. One process: both
    set `requested`. Several: JAX's own SIGTERM handler (the preemption notifier behind Orbax's
    sync point, through which the processes agree on the step) stays, and SIGINT (Ctrl-C) is
    made a SIGTERM to this process; a flag of one process could not stop the others."""

    def __init__(self):
        self._requested = threading.Event()
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        if jax.process_count() == 1:
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        else:
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, _as_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self._requested.set()


def _as_sigterm(signum, frame) -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def stop_requested(manager, step: int, signals: StopSignals) -> bool:
    """Whether the run stops after `step`: agreed through Orbax with several processes, the
    signal flag of this process otherwise."""
    preempted = manager.reached_preemption(step)  # every process calls it at every step
    return preempted or (jax.process_count() == 1 and signals.requested)


@jax.jit
def all_finite(tree) -> jax.Array:
    """True if every floating-point leaf of `tree` is finite (one device reduction)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
