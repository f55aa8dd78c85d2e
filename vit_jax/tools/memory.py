"""Memory per device of a training config: `vit-memory --config=NAME_OR_FILE[:arg]`.

    vit-memory --config=imagenet2012:variant=H/14 \\
        --devices=64 --config.mesh.fsdp=64 --config.mesh.data=1 [--json] [--no-compile]

The config is read as `vit-train` reads it (any --config.FIELD=VALUE applies); no dataset
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

from vit_jax.tools import run
from vit_jax.train.stopping import user_error


def make_flags() -> flags.FlagValues:
    """A fresh set of this tool's flags (the --config.FIELD=VALUE overrides are read apart, by
    vit_jax/train/command_line.py), so that main can be called more than once."""
    fv = flags.FlagValues()
    flags.DEFINE_string(
        "config",
        None,
        "The config: a packaged config's name (e.g. digits) or a config file's path[:ARG].",
        flag_values=fv,
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
    """`vit-memory`: prints the memory plan of a config; returns the exit status."""
    from vit_jax.train import command_line, cost

    argv = ["vit-memory", *(sys.argv[1:] if argv is None else argv)]
    try:
        rest, overrides = command_line.split_overrides(argv)
        fv = make_flags()
        if command_line.HELP.intersection(rest):
            print(command_line.usage(__doc__, fv, sys.modules[__name__]))
            return 0
        unexpected = fv(rest)[1:]
        if unexpected:
            raise ValueError(f"unexpected arguments: {unexpected}")
        if fv["config"].value is None:
            raise ValueError("--config=NAME_OR_FILE[:ARG] is required, e.g. --config=digits.")
        config = command_line.load(fv.config, overrides)
    except (flags.Error, ValueError) as e:
        return user_error(e)

    def action() -> str:
        plan = cost.plan_memory(config, fv.devices, compile_step=not fv["no-compile"].value)
        return json.dumps(plan) if fv.json else cost.format_plan(plan)

    return run(action)


if __name__ == "__main__":
    sys.exit(main())
