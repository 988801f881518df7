"""Bootstrap confidence intervals (percentile method) for means and paired differences."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.low > 0 or self.high < 0)

    def fmt(self, digits: int = 3) -> str:
        if self.n < 2 or math.isnan(self.low):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {(self.high - self.low) / 2:.{digits}f}"

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high, "n": self.n}


def bootstrap_mean(values: Sequence[float], level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> Interval:
    """Mean with a percentile-bootstrap interval; with fewer than 2 values the interval is NaN."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    if len(x) < 2:
        return Interval(float(x.mean()), math.nan, math.nan, len(x))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    a = (1 - level) / 2
    return Interval(float(x.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a)), len(x))


def bootstrap_paired(a: Sequence[float], b: Sequence[float], **kw) -> Interval:
    """Interval for mean(a − b) over paired observations (same prompt, same seed)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    return bootstrap_mean(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), **kw)
