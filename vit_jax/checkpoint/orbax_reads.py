"""Reading an Orbax checkpoint that turns out damaged, quietly: one failure, one message.

Orbax reads every array of a checkpoint concurrently. When one read fails it stops waiting for
the others and closes its event loop, and every read still in flight fails again where nobody
waits for it: Python prints each as an "Exception ignored" traceback, hundreds for a
checkpoint whose every file is damaged. `failed_reads_unreported` drops those echoes around a
read; `failure_reason` turns the failure itself into one line.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
import time
import warnings


def failure_reason(error: BaseException) -> str:
    """One line for a failed restore: the innermost cause (TensorStore's, which names the file
    and what is wrong with it) rather than Orbax's wrapper, whose message embeds a whole
    TensorStore spec."""
    while error.__cause__ is not None:
        error = error.__cause__
    first_line = (str(error).splitlines() or [repr(error)])[0]
    return f"{type(error).__name__}: {first_line[:300]}"


@contextlib.contextmanager
def failed_reads_unreported(settle_seconds: float = 5.0):
    """Drops the echoes of a failed Orbax read (the module docstring) while the read runs and,
    after a failure, until they stop coming (at most `settle_seconds`) and the abandoned reads
    are collected. Any other unraisable exception, warning or log record passes as usual. The
    caller reports the failure itself in an exception raised outside its `except` block (not
    chained to Orbax's, whose traceback holds the abandoned reads: they would echo when it is
    collected, later). Not for concurrent use from several threads (it swaps process-wide
    hooks)."""
    printed, echoes = sys.unraisablehook, [0]

    def hook(unraisable) -> None:
        value, origin = unraisable.exc_value, getattr(unraisable.object, "__qualname__", "")
        if origin.startswith("_read_array") or (
            isinstance(value, RuntimeError) and str(value) == "Event loop is closed"
        ):
            echoes[0] += 1
        else:
            printed(unraisable)

    def unretrieved(record: logging.LogRecord) -> bool:  # False: drop it
        message = record.getMessage()
        echo = "exception was never retrieved" in message and any(
            word in message for word in ("orbax", "OCDBT", "TensorStore", "tensorstore")
        )
        echoes[0] += echo
        return not echo

    def settle() -> None:
        deadline = time.monotonic() + settle_seconds
        while True:
            seen = echoes[0]
            gc.collect()  # the abandoned reads, while their echoes are still dropped
            time.sleep(0.1)
            if echoes[0] == seen or time.monotonic() > deadline:
                return

    sys.unraisablehook = hook
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.addFilter(unretrieved)
    with warnings.catch_warnings():  # "coroutine ... was never awaited": the same reads
        warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
        try:
            yield
            gc.collect()  # reads a caught failure abandoned, if any, while their echoes drop
            if echoes[0]:
                settle()
        except BaseException:
            settle()
            raise
        finally:
            asyncio_log.removeFilter(unretrieved)
            sys.unraisablehook = printed
