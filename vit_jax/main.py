"""Command line: train and evaluate a ViT from a config (`vit-train`, or python -m vit_jax.main).

    vit-train --config=digits --workdir=/tmp/digits
    vit-train --config=configs/cifar10.py:variant=S/16 --workdir=... \\
        --config.model.posemb=rope_axial --config.batch_size=256

--config is a packaged config's name or a config file's path; --config.FIELD=VALUE sets any
field (vit_jax/train/command_line.py); --show_config lists every field with its value, help and
allowed values.

Exit statuses (vit_jax/train/stopping.py): 0 completed, 1 fault, 2 user error, 3 diverged
(non-finite loss), 4 the workdir cannot be written (disk full, permissions), 75 preempted
(SIGTERM/SIGINT: saved; rerun to resume).

Several hosts: run the same command on every host with --coordinator=HOST:PORT
--num_processes=N --process_id=I (on Cloud TPU, --distributed alone: JAX finds the rest).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from absl import app, flags

from vit_jax.train.host_memory import POLICIES as HOST_MEMORY_POLICIES
from vit_jax.train.statuses import PREEMPTED, SIGNALS

flags.DEFINE_string(
    "config",
    None,
    "The config: a packaged config's name (e.g. digits) or a config file's path, with an "
    "optional :ARG for its get_config(ARG). Any field: --config.FIELD=VALUE.",
)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the config are written.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
flags.DEFINE_string("coordinator", None, "Multi-process: coordinator address HOST:PORT.")
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: index of this process.")
flags.DEFINE_integer(
    "distributed_timeout", 60, "Multi-process: seconds to wait for every process to join."
)
flags.DEFINE_integer(
    "heartbeat_timeout",
    30,
    "Multi-process: seconds without a heartbeat after which a process counts as dead and the "
    "others stop with an error (instead of waiting for it forever).",
)
flags.DEFINE_enum(
    "host_memory",
    "system",
    list(HOST_MEMORY_POLICIES),
    "Host memory the steps free: 'system' returns it to the kernel (the C library's default); "
    "'keep' keeps it for the next step, so that XLA:CPU's large temporaries stop page-faulting "
    "at every step: faster for large models on CPU, slower for small ones, glibc only "
    "(vit_jax/train/host_memory.py).",
)
flags.DEFINE_bool(
    "show_config",
    False,
    "Print every field of the config (with the overrides applied): its value, help and "
    "allowed values; then exit without training (no --workdir needed).",
)
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def main(argv: list[str] | None = None) -> None:
    """`vit-train`: reads the command line (`argv`, default sys.argv), trains, and exits with
    the run's status. A stop signal before the run's own handlers are in (imports, config,
    joining the processes) ends it at once with one line and status 75 (`stop_before_start`)."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, stop_before_start) for sig in SIGNALS}
    try:
        app.run(train, argv=argv, flags_parser=parse_flags)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_before_start(signum, frame) -> None:
    """SIGINT or SIGTERM before training began: nothing has been written yet, so the process
    ends at once, with one line and the preempted status, which tells a scheduler to rerun
    it. (Python's default would be a KeyboardInterrupt traceback, or none at all when JAX's
    garbage-collection callback swallows it and the run trains on; SIGTERM a silent 143.)"""
    name = signal.Signals(signum).name
    print(
        f"stopped by {name} before training began: nothing was written; rerun the same "
        "command to start.",
        file=sys.stderr,
        flush=True,
    )
    os._exit(PREEMPTED)


def parse_flags(argv: list[str]) -> list[str]:
    """Parses the flags of `argv` other than the --config.FIELD=VALUE overrides; returns
    [program, *overrides] (FIELD, VALUE pairs) for `train`. A mistake ends the process with one
    `error: ...` line and the user-error status."""
    from vit_jax.train.command_line import HELP, split_overrides, usage
    from vit_jax.train.stopping import user_error

    try:
        rest, overrides = split_overrides(argv)
        if HELP.intersection(rest):
            print(usage(__doc__, FLAGS, sys.modules[__name__]))
            sys.exit(0)
        unexpected = FLAGS(rest)[1:]
        if unexpected:
            raise ValueError(f"unexpected arguments: {unexpected}")
    except (flags.Error, ValueError) as e:
        sys.exit(user_error(e))
    return [argv[0], *overrides]


def train(argv: list[str]) -> None:
    """Trains the config of --config with the overrides in argv[1:] (from `parse_flags`)."""
    from absl import logging

    from vit_jax.train import host_memory, stopping

    try:  # first: the first threads to allocate settle malloc's arenas
        host_memory.apply(FLAGS.host_memory)
    except ValueError as e:
        sys.exit(stopping.user_error(e))
    from vit_jax.train import command_line

    if not FLAGS["verbosity"].present:  # Orbax and tfds are chatty at INFO; -v 0 shows it
        logging.set_verbosity(logging.WARNING)
        stopping.report_write_errors_once(FLAGS.workdir or ".")  # not Orbax's tracebacks too
    try:
        config = command_line.load(FLAGS.config, argv[1:])
        if FLAGS.show_config:
            from vit_jax.train.config import describe, validate

            validate(config, here=False)  # a bad value: one error line (devices: the run's)
            print(describe(config))
            sys.exit(stopping.COMPLETED)
        if not FLAGS.workdir:
            raise ValueError("--workdir is required: where checkpoints and metrics go.")
    except (ValueError, FileNotFoundError) as e:
        sys.exit(stopping.user_error(e))

    if FLAGS.distributed or FLAGS.coordinator:
        join_processes()
    from vit_jax.train.loop import train_and_evaluate

    try:
        summary = train_and_evaluate(config, FLAGS.workdir)
    except (ValueError, FileNotFoundError) as e:  # user-caused: one clear message, no traceback
        if not stopping.caused_by_user(e):
            raise  # a library's ValueError: a fault, with its traceback (status 1)
        sys.exit(stopping.user_error(e))
    except stopping.DivergedError as e:
        print(f"error: training diverged: {e}", file=sys.stderr)
        sys.exit(stopping.DIVERGED)
    except stopping.WorkdirWriteError as e:
        sys.exit(stopping.write_error(e))
    sys.exit(stopping.PREEMPTED if summary.get("preempted") else stopping.COMPLETED)


def join_processes() -> None:
    """jax.distributed.initialize with bounded waits. A coordinator that cannot be reached ends
    the run with one message after --distributed_timeout seconds (checked here first: JAX's
    own timeout aborts the process); a process that never joins, or dies later, makes JAX's
    distributed service stop the others (after --distributed_timeout or --heartbeat_timeout
    seconds) with "the JAX distributed service detected fatal errors"."""
    import jax

    if FLAGS.coordinator and FLAGS.process_id not in (None, 0):
        wait_for_coordinator(FLAGS.coordinator, FLAGS.distributed_timeout)
    jax.distributed.initialize(
        coordinator_address=FLAGS.coordinator,
        num_processes=FLAGS.num_processes,
        process_id=FLAGS.process_id,
        initialization_timeout=FLAGS.distributed_timeout,
        heartbeat_timeout_seconds=FLAGS.heartbeat_timeout,
    )


def wait_for_coordinator(address: str, timeout: float) -> None:
    """Returns once HOST:PORT accepts a connection; after `timeout`, prints the fix and exits
    with the user-error status."""
    import socket
    import time

    from vit_jax.train.stopping import USER_ERROR

    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return
        except (OSError, ValueError) as e:
            if time.monotonic() > deadline or isinstance(e, ValueError):
                print(
                    f"error: the coordinator {address} cannot be reached ({e}) after "
                    f"{timeout} s: start process 0 there first, pass every process the same "
                    "--coordinator=HOST:PORT (the host of process 0), and check that the port "
                    "is open between the hosts.",
                    file=sys.stderr,
                )
                sys.exit(USER_ERROR)
            time.sleep(0.5)


if __name__ == "__main__":
    main()
