"""A `jax.profiler` trace of chosen training steps, for TensorBoard's profile plugin or Perfetto.

    --config.profile_start_step=100 --config.profile_num_steps=5

traces steps 101..105 into WORKDIR/profile (`tensorboard --logdir WORKDIR/profile`, or open the
`*.trace.json.gz` in https://ui.perfetto.dev). Starting after the first steps leaves compilation
out of the trace; the trace waits for its last step to finish before it stops.
"""

from __future__ import annotations

import os

import jax


class StepProfiler:
    """Starts a trace before step `start + 1` and stops it after step `start + num_steps`
    (1-based step counts, as the training log shows them); start == 0 turns it off."""

    def __init__(self, workdir: str, start: int, num_steps: int):
        self.directory = os.path.join(workdir, "profile")
        self.start, self.stop = start, start + num_steps
        self.active = False

    def before(self, done: int) -> None:
        """Call before running step `done + 1` (`done` steps are complete)."""
        if self.start and done == self.start and not self.active:
            jax.profiler.start_trace(self.directory)
            self.active = True

    def after(self, done: int, outputs) -> str | None:
        """Call after step `done`, with the step's outputs; returns a message when the trace
        was written."""
        if self.active and done >= self.stop:
            jax.block_until_ready(outputs)
            self.close()
            return f"profiler trace of steps {self.start + 1}-{done} written to {self.directory}"
        return None

    def close(self) -> None:
        """Stops a trace in progress (the run ended or failed inside the traced steps)."""
        if self.active:
            self.active = False
            jax.profiler.stop_trace()


__all__ = ["StepProfiler"]
