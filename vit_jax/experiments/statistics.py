"""Seeds, spread and the decision rule the experiments report with.

Every number an experiment reports is a mean over seeds with its standard deviation (sample,
ddof=1). Two settings are compared *paired by seed* (same seed: same data order, same
augmentation draws): the difference d_s = a_s - b_s of each seed, its mean and its standard
error se = std(d) / sqrt(n). The rule, fixed before any run:

    a claim that a > b  holds            if mean(d) > 2 se   (and mean(d) > 0)
                        does not hold    if mean(d) < -2 se  (b is better, beyond the noise)
                        is not resolved  otherwise (the difference is within twice its error)

With one seed there is no error estimate and nothing is resolved.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

HOLDS, DOES_NOT_HOLD, NOT_RESOLVED = "holds", "does not hold", "not resolved"


@dataclasses.dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of `n` values (std is nan for n < 2)."""

    mean: float
    std: float
    n: int

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """'97.3 ± 0.4' (values scaled, e.g. to percent); '97.3' for one value; '–' for none."""
        if self.n == 0:
            return "–"
        if self.n == 1 or math.isnan(self.std):
            return f"{scale * self.mean:.{digits}f}"
        return f"{scale * self.mean:.{digits}f} ± {scale * self.std:.{digits}f}"


def spread(values: Sequence[float]) -> Spread:
    """Spread of `values` (finite floats)."""
    n = len(values)
    if n == 0:
        return Spread(math.nan, math.nan, 0)
    mean = sum(values) / n
    if n == 1:
        return Spread(mean, math.nan, 1)
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return Spread(mean, math.sqrt(var), n)


@dataclasses.dataclass(frozen=True)
class Paired:
    """The paired difference a - b over seeds: its mean, standard error and seed count."""

    mean: float
    se: float
    n: int

    @property
    def verdict(self) -> str:
        """The decision rule for the claim a > b (module docstring)."""
        if self.n < 2 or math.isnan(self.se):
            return NOT_RESOLVED
        if self.mean > 2 * self.se and self.mean > 0:
            return HOLDS
        if self.mean < -2 * self.se and self.mean < 0:
            return DOES_NOT_HOLD
        return NOT_RESOLVED

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """'+1.2 ± 0.3 (n=3)': the mean difference ± its standard error (points if scaled)."""
        if self.n == 0:
            return "–"
        se = "?" if math.isnan(self.se) else f"{scale * self.se:.{digits}f}"
        return f"{scale * self.mean:+.{digits}f} ± {se} (n={self.n})"


def paired(a: dict[int, float], b: dict[int, float]) -> Paired:
    """Paired difference of two {seed: value} maps over the seeds they share."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    s = spread(diffs)
    se = s.std / math.sqrt(s.n) if s.n >= 2 else math.nan
    return Paired(s.mean if s.n else math.nan, se, s.n)
