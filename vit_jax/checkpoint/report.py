"""What a restore did to each parameter, as data (`Report`) and as the printed table.

restored workdirs/digits/checkpoints/1500: 70 loaded, 2 resized
  loaded   Transformer/encoderblock_*/LayerNorm_0/bias (x4)  (96,)
  resized  Transformer/posembed_input/pos_embedding          (1, 17, 96) → (1, 65, 96)  ...
"""

from __future__ import annotations

import collections
import dataclasses

from vit_jax.models import paths

LOADED, RESIZED, CONVERTED, REINIT, DROPPED = (
    "loaded",
    "resized",
    "converted",
    "re-initialised",
    "dropped",
)
ACTIONS = (LOADED, RESIZED, CONVERTED, REINIT, DROPPED)

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One parameter's fate: `key` ('/'-joined, per-block), `action`, shapes and a note."""

    key: str
    action: str
    stored: Shape | None
    target: Shape | None
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Report:
    """What a restore did to each parameter; `str(report)` is the printed table."""

    source: str
    entries: tuple[Entry, ...]
    notes: tuple[str, ...] = ()  # what the restore cannot do for the model, printed last

    def keys(self, action: str) -> list[str]:
        """Keys with the given action (LOADED, RESIZED, CONVERTED, REINIT or DROPPED)."""
        return [e.key for e in self.entries if e.action == action]

    def __str__(self) -> str:
        counts = collections.Counter(e.action for e in self.entries)
        head = f"restored {self.source}: " + ", ".join(
            f"{counts[a]} {a}" for a in ACTIONS if counts[a]
        )
        rows = collections.Counter(_row(e) for e in self.entries)  # one row for alike blocks
        return "\n".join(
            [head]
            + format_table(
                [
                    (action, key + (f" (x{n})" if n > 1 else ""), *rest)
                    for (action, key, *rest), n in rows.items()
                ]
            )
            + [f"note: {note}" for note in self.notes]
        )


def format_table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows of equally many cells -> lines of left-aligned columns, indented by two spaces."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        ("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))).rstrip()
        for row in rows
    ]


def _row(e: Entry) -> tuple[str, str, str, str]:
    if e.stored and e.target and e.stored != e.target:
        shapes = f"{e.stored} → {e.target}"
    else:
        shapes = str(e.stored or e.target)
    return (e.action, paths.block_pattern(e.key), shapes, e.note)
