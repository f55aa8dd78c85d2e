"""The two ways a checkpoint can fail to load, each a ValueError with one message that says
what is wrong and what to do."""

from __future__ import annotations


class UnreadableCheckpointError(ValueError):
    """The file or directory is not a checkpoint this package reads: truncated or corrupt, holds
    pickled Python objects, or has an unknown parameter layout."""


class CheckpointMismatchError(ValueError):
    """The checkpoint is of another architecture than the model it is restored into."""
