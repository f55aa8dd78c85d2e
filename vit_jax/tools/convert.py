"""Convert a checkpoint's parameters: `python -m vit_jax.tools.convert SRC DST`.

SRC: an Orbax checkpoints directory (newest step), a step directory, or an `.npz` (official ViT
or big_vision layout). DST ending in `.npz`: an official-layout .npz (per-block, pre-Linen names;
loads in timm's `load_pretrained`). Otherwise: a params-only Orbax checkpoint DST/0/state that
`init_from` and `load_params` read. The stored model config, if any, is carried along.
"""

from __future__ import annotations

import argparse
import sys

from vit_jax.checkpoint.npz import export_npz
from vit_jax.checkpoint.orbax_params import save_orbax_params
from vit_jax.checkpoint.restore import load_params
from vit_jax.tools import run


def convert(src: str, dst: str) -> str:
    """Writes the parameters of `src` to `dst`; returns a one-line summary."""
    params, meta = load_params(src)
    if dst.endswith(".npz"):
        export_npz(dst, params, config=meta.get("config"))
        written = dst
    else:
        written = save_orbax_params(dst, params, config=meta.get("config"))
    return f"wrote {written} from {meta['path']} ({meta['format']}, {meta['layout']} layout)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vit_jax.tools.convert", description=__doc__.split("\n")[0]
    )
    parser.add_argument("src", help="Orbax checkpoints dir, step dir, or .npz file")
    parser.add_argument(
        "dst", help="an .npz path, or a directory for a params-only Orbax checkpoint"
    )
    args = parser.parse_args(argv)
    return run(lambda: convert(args.src, args.dst))


if __name__ == "__main__":
    sys.exit(main())
