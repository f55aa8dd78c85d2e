"""Command-line tools: `python -m vit_jax.tools.inspect PATH`, `python -m vit_jax.tools.convert
SRC DST`, `python -m vit_jax.tools.memory --config=FILE` (bytes per device of a run).
Each has a `main(argv)` that tests call in-process."""

from __future__ import annotations

import sys
from collections.abc import Callable


def run(action: Callable[[], str]) -> int:
    """Prints what `action` returns and gives exit code 0; an error a user can cause (a missing
    or unreadable checkpoint) is printed as one line `error: ...` on stderr with exit code 1."""
    try:
        print(action())
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
