"""Paired bootstrap confidence interval of a mean difference (percentile method).

Why paired: the tuned model and its baseline answer the same examples, so the per-example
differences carry the comparison and the example-to-example spread cancels out. Why the
percentile method: it needs no distributional assumption and no numpy, and with the
hundreds of examples an evaluation set has its coverage is close to nominal (the unit
tests measure it). Deterministic: the resampling is driven by ``random.Random(seed)``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

MIN_SAMPLES = 100
MAX_SAMPLES = 100_000


@dataclass(frozen=True)
class PairedInterval:
    """Mean of ``tuned - baseline`` and its two-sided percentile interval."""

    baseline: float
    tuned: float
    delta: float
    low: float
    high: float
    confidence: float
    samples: int


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (NumPy's default, "type 7")."""
    if not sorted_values:
        return math.nan
    position = q * (len(sorted_values) - 1)
    below = math.floor(position)
    above = min(below + 1, len(sorted_values) - 1)
    frac = position - below
    return sorted_values[below] + (sorted_values[above] - sorted_values[below]) * frac


def paired_bootstrap(
    baseline: Sequence[float],
    tuned: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> PairedInterval:
    """The mean difference ``tuned - baseline`` with a two-sided percentile interval.

    ``confidence`` is the two-sided level: the interval runs from the ``(1-c)/2`` to the
    ``(1+c)/2`` quantile of ``resamples`` bootstrap means of the per-example differences.
    One example (or none) gives a degenerate interval at the point estimate.
    """
    if len(baseline) != len(tuned):
        raise ValueError(f"paired samples differ in length: {len(baseline)} vs {len(tuned)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not MIN_SAMPLES <= resamples <= MAX_SAMPLES:
        raise ValueError(f"resamples must be in [{MIN_SAMPLES}, {MAX_SAMPLES}], got {resamples}")
    n = len(tuned)
    if n == 0:
        nan = math.nan
        return PairedInterval(nan, nan, nan, nan, nan, confidence, 0)
    diffs = [t - b for b, t in zip(baseline, tuned, strict=True)]
    delta = math.fsum(diffs) / n
    mean_b, mean_t = math.fsum(baseline) / n, math.fsum(tuned) / n
    if n == 1 or all(d == diffs[0] for d in diffs):
        return PairedInterval(mean_b, mean_t, delta, delta, delta, confidence, n)
    rng = random.Random(seed)
    means = sorted(math.fsum(rng.choices(diffs, k=n)) / n for _ in range(resamples))
    alpha = (1.0 - confidence) / 2.0
    low, high = _quantile(means, alpha), _quantile(means, 1.0 - alpha)
    return PairedInterval(mean_b, mean_t, delta, low, high, confidence, n)
