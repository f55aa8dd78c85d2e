"""Memory per device of a training config: `python -m vit_jax.tools.memory --config=FILE[:arg]`.

    python -m vit_jax.tools.memory --config=configs/imagenet2012.py:variant=H/14 \\
        --devices=64 --config.mesh.fsdp=64 --config.mesh.data=1 [--json] [--no-compile]

The config is built as `vit_jax.main` builds it (any --config.FIELD=VALUE applies); no dataset
is opened (an unset model.num_classes is taken as 1000). --devices (default: this machine's
device count) is the size of the planned mesh, so a 64-device FSDP run can be planned on a
laptop. Prints parameters, optimizer state and gradients in bytes per device (exact, from the
sharding rule) and the peak of XLA's temporaries for the compiled per-device step (an XLA:CPU
proxy on a CPU machine; skipped with --no-compile); --json prints one JSON object instead.
See vit_jax/train/cost.py.
"""

from __future__ import annotations

import json
import sys

from absl import flags
from ml_collections import config_flags

from vit_jax.tools import run


def make_flags(argv: list[str]) -> flags.FlagValues:
    """A fresh set of this tool's flags for the command line `argv` (config_flags defines the
    --config.FIELD overrides it finds there), so that main can be called more than once."""
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Config file (configs/*.py[:arg]).",
        flag_values=fv,
        lock_config=True,
        sys_argv=argv,
    )
    flags.DEFINE_integer(
        "devices", None, "Devices of the planned mesh (default: this machine's).", flag_values=fv
    )
    flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.", flag_values=fv)
    flags.DEFINE_bool(
        "no-compile", False, "Skip compiling the step (no activation peak).", flag_values=fv
    )
    return fv


def main(argv: list[str] | None = None) -> int:
    argv = ["vit_jax.tools.memory", *(sys.argv[1:] if argv is None else argv)]
    try:
        fv = make_flags(argv)
        rest = fv(argv)
        if len(rest) > 1:
            raise ValueError(f"unexpected arguments: {rest[1:]}")
        if fv["config"].value is None:
            raise ValueError("--config=FILE[:arg] is required, e.g. --config=configs/digits.py.")
    except (flags.Error, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (AttributeError, KeyError) as e:  # config_flags: an override of an unknown field
        text = str(e).replace("\\n", " ").strip("'\"").replace("\\'", "'")
        print(f"error: --config override of an unknown field: {text}", file=sys.stderr)
        return 1
    from vit_jax.train import cost

    def action() -> str:
        plan = cost.plan_memory(fv.config, fv.devices, compile_step=not fv["no-compile"].value)
        return json.dumps(plan) if fv.json else cost.format_plan(plan)

    return run(action)


if __name__ == "__main__":
    sys.exit(main())
