"""How a run ends, as a shell or a scheduler sees it: the exit statuses of every command and
the signals that stop a run (their meaning: vit_jax/train/stopping.py). Nothing heavy is
imported here: the command line reads them before JAX loads."""

import signal

COMPLETED, FAULT, USER_ERROR, DIVERGED, IO_ERROR, PREEMPTED = 0, 1, 2, 3, 4, 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)
