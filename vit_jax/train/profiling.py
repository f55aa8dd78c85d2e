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
    (1-based step counts, as the training log shows them), or after the run's last step
    `total_steps` if that comes first; start == 0 turns it off."""

    def __init__(self, workdir: str, start: int, num_steps: int, total_steps: int):
        self.directory = os.path.join(workdir, "profile")
        self.start, self.asked = start, start + num_steps
        self.stop = min(self.asked, total_steps)
        self.active, self.done = False, start

    def plan(self, first: int) -> str | None:
        """What to tell a run that starts after step `first` when the asked steps are not all
        ahead of it (a resume past them, or a run that ends inside them or before them) or when
        the run's compiling first step is among them (a resume at their start)."""
        if not self.start:
            return None
        asked = f"profile_start_step={self.start} (steps {self.start + 1}-{self.asked})"
        if self.start >= self.stop:
            return f"{asked}: the run ends at step {self.stop}, so no profiler trace is written."
        if first > self.start:
            return (
                f"{asked}: this run resumes after step {first}, so no profiler trace is written; "
                "set profile_start_step to a step after it."
            )
        if first == self.start:
            return (
                f"{asked}: this run resumes at step {first}, so its first traced step compiles "
                "inside the trace; a later profile_start_step leaves compilation out."
            )
        if self.stop < self.asked:
            return f"{asked}: the run ends at step {self.stop}; the trace stops there."
        return None

    def before(self, done: int) -> None:
        """Call before running step `done + 1` (`done` steps are complete)."""
        if self.start and done == self.start < self.stop and not self.active:
            jax.profiler.start_trace(self.directory)
            self.active = True

    def after(self, done: int, outputs) -> str | None:
        """Call after step `done`, with the step's outputs; returns a message when the trace
        was written."""
        if not self.active:
            return None
        self.done = done
        if done >= self.stop:
            jax.block_until_ready(outputs)
            return self.close()
        return None

    def close(self) -> str | None:
        """Stops a trace in progress, e.g. when the run stopped or failed inside the traced
        steps; returns a message when it wrote one."""
        if not self.active:
            return None
        self.active = False
        jax.profiler.stop_trace()
        if self.done == self.start:
            return f"profiler trace written to {self.directory}: step {self.start + 1} did not end"
        steps = f"steps {self.start + 1}-{self.done}"
        cut = "" if self.done >= self.stop else f", cut short: the run stopped after {self.done}"
        return f"profiler trace of {steps} written to {self.directory}{cut}"


__all__ = ["StepProfiler"]
