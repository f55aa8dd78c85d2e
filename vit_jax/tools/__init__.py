"""Command-line tools, each also a script of the package: `vit-inspect PATH`
(`python -m vit_jax.tools.inspect`), `vit-convert SRC DST` (`python -m vit_jax.tools.convert`),
`vit-memory --config=NAME_OR_FILE` (`python -m vit_jax.tools.memory`: bytes per device of a run).
Each has a `main(argv=None)` that returns the exit status (tests call it in-process)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from vit_jax.train.stopping import WorkdirWriteError, user_error, write_error


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors (a missing argument, a bad value) are one line,
    `error: ...`, with status 2, as every other mistake on our command lines; --help shows the
    usage."""

    def error(self, message: str):
        print(f"error: {message} (--help shows the usage)", file=sys.stderr)
        self.exit(2)


def run(action: Callable[[], str]) -> int:
    """Prints what `action` returns and gives exit status 0; an error a user can cause (a missing
    or unreadable checkpoint, a config that cannot work) is one line `error: ...` on stderr with
    the user-error status, 2 (as for vit-train; argparse's usage errors exit with 2 too); a
    file that cannot be written (disk full, permissions: `WorkdirWriteError`) is one line with
    status 4, IO_ERROR. Output piped into a reader that stops early (`| head`) ends quietly."""
    try:
        text = action()
    except WorkdirWriteError as e:
        return write_error(e)
    except (FileNotFoundError, ValueError) as e:
        return user_error(e)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # the reader has gone: nothing more to say, and no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
