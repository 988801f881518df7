"""Bootstrap confidence intervals (percentile method): over seeds, over prompts, and paired over both.

A seed interval needs ``MIN_SEEDS`` seeds: a bootstrap of two values says nothing about a third seed, so below
that a summary keeps the values and states that it has no interval. Every interval says what it is over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

MIN_SEEDS = 3
LEVEL = 0.95
RESAMPLES = 10_000
Kind = Literal["seeds", "prompts", "none"]


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int
    kind: Kind = "none"  # what the interval is over; "none": no interval (too few seeds), only ``values``
    values: tuple[float, ...] = ()  # the per-seed values when there is no interval

    @property
    def has_interval(self) -> bool:
        return self.kind != "none" and not math.isnan(self.low)

    def excludes_zero(self) -> bool:
        return self.has_interval and (self.low > 0 or self.high < 0)

    def fmt(self, digits: int = 3, sci: bool = False) -> str:
        """``mean ± half-width`` (or each seed's value); ``sci``: in powers of ten, for figures like 1e-3."""
        form = f".{digits}{'e' if sci else 'f'}"
        if math.isnan(self.mean):
            return "—"
        if self.has_interval:
            return f"{self.mean:{form}} ± {(self.high - self.low) / 2:{form}}"
        if len(self.values) > 1:
            return " / ".join(f"{v:{form}}" for v in self.values)
        return f"{self.mean:{form}}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Interval":
        return cls(d["mean"], d["ci_low"], d["ci_high"], d["n"], d.get("over", "none"), tuple(d.get("values", ())))

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high, "n": self.n, "over": self.kind,
                **({"values": list(self.values)} if self.values else {})}


def no_interval(values: Sequence[float]) -> Interval:
    x = [float(v) for v in values]
    return Interval(float(np.mean(x)) if x else math.nan, math.nan, math.nan, len(x), "none", tuple(x))


def _percentile(means: np.ndarray, level: float) -> tuple[float, float]:
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def bootstrap_mean(values: Sequence[float], kind: Kind, level: float = LEVEL, resamples: int = RESAMPLES,
                   seed: int = 0) -> Interval:
    """Mean with a percentile-bootstrap interval over ``values`` (seeds or prompts, as ``kind`` says). Seeds
    need ``MIN_SEEDS`` values, prompts two; fewer give no interval."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < (MIN_SEEDS if kind == "seeds" else 2) or kind == "none":
        return no_interval(x)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    return Interval(float(x.mean()), *_percentile(means, level), len(x), kind)


def over_seeds(values: Sequence[float]) -> Interval:
    return bootstrap_mean(values, "seeds")


def paired_over_prompts(a: Sequence[float], b: Sequence[float], **kw) -> Interval:
    """Interval for mean(a − b) over the prompts of one pair of evaluations (same prompts, same policy seed)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    return bootstrap_mean(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), "prompts", **kw)


def hierarchical_paired(diffs_per_seed: Sequence[Sequence[float]], level: float = LEVEL,
                        resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """Mean paired difference over matched seeds, each seed's mean over its matched prompts. The bootstrap
    resamples seeds, then prompts within each drawn seed, so that the interval carries both the variation
    between seeds and the finite prompt set. Fewer than ``MIN_SEEDS`` seeds: the per-seed means, no interval."""
    per_seed = [np.asarray(d, dtype=np.float64) for d in diffs_per_seed if len(d)]
    seed_means = [float(d.mean()) for d in per_seed]
    if len(per_seed) < MIN_SEEDS:
        return no_interval(seed_means)
    rng = np.random.default_rng(seed)
    s = len(per_seed)
    drawn = rng.integers(0, s, size=(resamples, s))  # which seed fills each slot of each resample
    slot_means = np.empty((resamples, s))
    for k, d in enumerate(per_seed):  # each slot that drew seed k gets its own resample of k's prompts
        where = np.nonzero(drawn == k)
        picks = rng.integers(0, len(d), size=(len(where[0]), len(d)), dtype=np.int32)
        slot_means[where] = d[picks].mean(axis=1)
    return Interval(float(np.mean(seed_means)), *_percentile(slot_means.mean(axis=1), level), s, "seeds")
