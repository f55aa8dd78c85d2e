"""Describe a checkpoint without loading it: `python -m vit_jax.tools.inspect PATH`.

PATH is any checkpoint `load_params` reads: an Orbax checkpoints directory (newest step) or
training workdir, a step directory, an `.npz` in the official ViT or big_vision layout, a Flax
msgpack file, an http(s):// or gs:// URL or a published name (downloaded once). Prints the
format and layout, a one-line description of the model (e.g. "B/16, learned posemb with class
slot, token classifier, 1000 classes, grid 14x14"), the parameter count and the parameter tree
with shapes (blocks listed once). Only metadata and array headers are read.
"""

from __future__ import annotations

import collections
import math
import sys

from vit_jax.checkpoint import architecture
from vit_jax.checkpoint.adapt import per_block_shapes
from vit_jax.checkpoint.report import format_table
from vit_jax.checkpoint.restore import checkpoint_shapes
from vit_jax.models import paths
from vit_jax.tools import ArgumentParser, run


def describe(path: str) -> str:
    """The text `inspect` prints for the checkpoint at `path`."""
    shapes, meta = checkpoint_shapes(path)
    arch = architecture.infer(per_block_shapes(shapes), meta)
    flat = paths.shapes(shapes)
    where = f"{meta['format']} checkpoint" + (
        f", step {meta['step']}" if meta["step"] is not None else ""
    )
    layout = f"{meta['layout']} layout, {meta['naming']} names, "
    layout += "scanned blocks" if meta["scanned"] else "per-block"
    count = sum(math.prod(s) for s in flat.values())
    rows = collections.Counter((paths.block_pattern(k), str(s)) for k, s in flat.items())
    tree = [(key + (f" (x{n})" if n > 1 else ""), shape) for (key, shape), n in rows.items()]
    return "\n".join(
        [
            f"{meta['path']}: {where} ({layout})",
            f"model: {arch.summary()}",
            "config stored: "
            + (
                "yes"
                if meta.get("config")
                else "no (the model above is read from the shapes, where a parameter-free "
                "position embedding, sincos* or rope_axial, leaves no trace)"
            ),
            f"parameters: {count:,} in {len(flat)} arrays",
            *format_table(tree),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m vit_jax.tools.inspect", description=__doc__.split("\n")[0]
    )
    parser.add_argument("path", help="Orbax checkpoints dir, step dir, or .npz file")
    args = parser.parse_args(argv)
    return run(lambda: describe(args.path))


if __name__ == "__main__":
    sys.exit(main())
