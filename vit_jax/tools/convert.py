"""Convert a checkpoint's parameters: `python -m vit_jax.tools.convert SRC DST`.

SRC: any checkpoint `load_params` reads: an Orbax checkpoints directory (newest step) or training
workdir, a step directory, an `.npz` (official ViT or big_vision layout), a Flax msgpack file, an
http(s):// or gs:// URL or a published name (downloaded once). DST ending in `.npz` (any case): an
official-layout .npz (per-block, pre-Linen names; loads in timm's `load_pretrained`; replaced if
it exists). Otherwise: a params-only Orbax checkpoint DST/0/state that `init_from` and
`load_params` read, in a new (or empty) directory. The stored model config, if any, is carried
along. DST is checked before SRC is read.
"""

from __future__ import annotations

import os
import shutil
import sys

from vit_jax.checkpoint.npz import export_npz
from vit_jax.checkpoint.orbax_params import save_orbax_params
from vit_jax.checkpoint.restore import load_params
from vit_jax.tools import ArgumentParser, run
from vit_jax.train.folders import check_creatable
from vit_jax.train.stopping import writing


def check_destination(dst: str) -> None:
    """Raises ValueError if `dst` cannot take the converted checkpoint: an .npz path that is a
    directory, an Orbax destination that is a file or a directory with something in it, or a
    place where no file can be made (under a file, a folder that takes no new files)."""
    check_creatable(dst)
    if is_npz(dst):
        if os.path.isdir(dst):
            raise ValueError(f"{dst} is a directory: name an .npz file to write.")
        return
    if os.path.isfile(dst):
        raise ValueError(
            f"{dst} is a file: an Orbax checkpoint is a directory. Name a new directory, or a "
            "path ending in .npz for a file."
        )
    if os.path.isdir(dst) and os.listdir(dst):
        raise ValueError(
            f"{dst} already holds files: name a new (or empty) directory for the Orbax checkpoint."
        )


FIX = "free disk space or fix the permissions, then rerun the same command"


def is_npz(dst: str) -> bool:
    return dst.lower().endswith(".npz")


def convert(src: str, dst: str) -> str:
    """Writes the parameters of `src` to `dst`; returns a one-line summary. A write that fails
    (disk full, permissions) raises WorkdirWriteError naming the file and leaves no part of an
    Orbax destination behind (an .npz is written whole or not at all)."""
    check_destination(dst)
    params, meta = load_params(src)
    if is_npz(dst):
        with writing(dst, FIX):
            export_npz(dst, params, config=meta.get("config"))
        written = dst
    else:
        existed = os.path.isdir(dst)  # and empty: check_destination
        try:
            with writing(dst, FIX):
                written = save_orbax_params(dst, params, config=meta.get("config"))
        except BaseException:
            for name in os.listdir(dst) if os.path.isdir(dst) else ():
                shutil.rmtree(os.path.join(dst, name), ignore_errors=True)
            if not existed and os.path.isdir(dst):
                os.rmdir(dst)
            raise
    return f"wrote {written} from {meta['path']} ({meta['format']}, {meta['layout']} layout)"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
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
