"""Paired statistics for release gates: a difference measured on the same items, with an interval.

Two rungs scored on the same items differ only where they disagree, so the comparison is paired:
resample items (with replacement), recompute the statistic on both rungs' values of the same
items, and read the interval off the resampled statistics. `scipy.stats.bootstrap(paired=True)`
does exactly this for any statistic (accuracy difference, perplexity ratio over documents, mean
KL over documents), so one method serves every gate; BCa (its default) corrects for bias and
skew. Where every item agrees the resampled statistic is constant, BCa is undefined and the
interval is the point itself. Resampling is seeded: the same per-item files give the same verdict.

A gate is a one-sided statement ("the drop is at most 2 points"). Each end of a two-sided interval
at level 2c - 1 is a one-sided bound at level c, so `interval(..., confidence=c)` returns both
ends and a gate reads the one it needs:
- pass: the bound on the bad side is inside the threshold;
- FAIL: the point estimate itself is outside;
- inconclusive: in between. The data cannot tell; `items_to_resolve` says how many items would,
  if the point estimate and the per-item spread stayed as observed (width shrinks as 1/sqrt(n)).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

PASS, FAIL, INCONCLUSIVE = "pass", "FAIL", "inconclusive"


@dataclass(frozen=True)
class Estimate:
    """A statistic's point value and the ends of its interval; each end a one-sided bound."""

    point: float
    low: float
    high: float
    items: int  # resampled units (items, documents)


def interval(samples: Sequence[Sequence[float]], statistic: Callable[..., np.ndarray], confidence: float,
             seed: int, resamples: int = 9999) -> Estimate:
    """Paired bootstrap of `statistic(*samples, axis=-1)` over items (the samples' common axis)."""
    from scipy.stats import bootstrap

    arrays = [np.asarray(s, dtype=np.float64) for s in samples]
    n = len(arrays[0])
    if n == 0 or any(len(a) != n for a in arrays):
        raise ValueError(f"paired samples need equal, non-zero lengths, got {[len(a) for a in arrays]}")
    point = float(statistic(*arrays, axis=-1))
    level = 2 * confidence - 1  # two-sided level whose ends are one-sided bounds at `confidence`
    if _constant_statistic(arrays, statistic, seed):
        return Estimate(point, point, point, n)
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa's degenerate-data warning: handled below
        result = bootstrap(arrays, statistic, n_resamples=resamples, paired=True, vectorized=True, axis=-1,
                           confidence_level=level, method="BCa", rng=rng)
        low, high = result.confidence_interval
        if not (np.isfinite(low) and np.isfinite(high)):  # BCa undefined (e.g. one discordant item)
            result = bootstrap(arrays, statistic, n_resamples=resamples, paired=True, vectorized=True, axis=-1,
                               confidence_level=level, method="percentile", rng=np.random.default_rng(seed))
            low, high = result.confidence_interval
    return Estimate(point, min(float(low), point), max(float(high), point), n)


def _constant_statistic(arrays: list[np.ndarray], statistic: Callable[..., np.ndarray], seed: int) -> bool:
    """True when resampling does not move the statistic (identical rungs): then every resample
    gives the point, BCa is undefined, and the interval is the point itself."""
    n = len(arrays[0])
    index = np.random.default_rng(seed).integers(0, n, size=(32, n))
    values = statistic(*(a[index] for a in arrays), axis=-1)
    return bool(np.allclose(values, statistic(*arrays, axis=-1), rtol=0, atol=1e-12))


@dataclass(frozen=True)
class Judgement:
    verdict: str                   # pass | FAIL | inconclusive
    bound: float                   # the interval end the verdict reads
    items_needed: int | None = None  # inconclusive: items that would resolve it, all else as observed


def judge(estimate: Estimate, threshold: float, direction: str) -> Judgement:
    """direction ">=": the statistic must be at least `threshold`; "<=": at most; "within": its
    absolute value at most `threshold` (an equivalence gate: both ends inside +-threshold)."""
    e = estimate
    if direction == ">=":
        bound, point_ok, bound_ok = e.low, e.point >= threshold, e.low >= threshold
    elif direction == "<=":
        bound, point_ok, bound_ok = e.high, e.point <= threshold, e.high <= threshold
    elif direction == "within":
        bound = e.low if abs(e.low) > abs(e.high) else e.high
        point_ok, bound_ok = abs(e.point) <= threshold, max(abs(e.low), abs(e.high)) <= threshold
        threshold = math.copysign(threshold, bound)
    else:
        raise ValueError(f"direction {direction!r}: expected >=, <= or within")
    if bound_ok:
        return Judgement(PASS, bound)
    if not point_ok:
        return Judgement(FAIL, bound)
    return Judgement(INCONCLUSIVE, bound, items_to_resolve(e, bound, threshold))


def items_to_resolve(estimate: Estimate, bound: float, threshold: float) -> int | None:
    """Items for the bound to reach the threshold if the point and per-item spread stay as
    observed: the half-width shrinks as 1/sqrt(n). None when the point sits on the threshold."""
    margin, half_width = abs(threshold - estimate.point), abs(bound - estimate.point)
    if margin <= 0:
        return None
    return math.ceil(estimate.items * (half_width / margin) ** 2)
