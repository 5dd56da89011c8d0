"""Paired bootstrap confidence intervals (percentile method): of a mean difference, and of
the difference of two token-weighted ratios (held-out loss/perplexity).

Why paired: the tuned model and its baseline answer the same examples, so the per-example
differences carry the comparison and the example-to-example spread cancels out. Why the
percentile method: it needs no distributional assumption and no numpy, and with the
hundreds of examples an evaluation set has its coverage is close to nominal (the unit
tests measure it). Deterministic: the resampling is driven by ``random.Random(seed)``.

Held-out loss is a corpus-level ratio (summed NLL over summed target tokens), not a mean
of per-example values, so :func:`paired_ratio_bootstrap` resamples whole examples and
recomputes both ratios on each resample: long examples keep their weight, and the
baseline and tuned sums of one example move together (the pairing).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
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


def _check(confidence: float, resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not MIN_SAMPLES <= resamples <= MAX_SAMPLES:
        raise ValueError(f"resamples must be in [{MIN_SAMPLES}, {MAX_SAMPLES}], got {resamples}")


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
    _check(confidence, resamples)
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


def _identity(value: float) -> float:
    return value


def paired_ratio_bootstrap(
    baseline_sums: Sequence[float],
    tuned_sums: Sequence[float],
    weights: Sequence[float],
    *,
    transform: Callable[[float], float] | None = None,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> PairedInterval:
    """``f(sum(tuned)/sum(w)) - f(sum(baseline)/sum(w))`` with a two-sided percentile interval.

    Example ``i`` has the baseline's and the tuned model's summed value (NLL over its target
    tokens) and its weight (token count); ``f`` is ``transform`` (identity by default; a
    capped ``exp`` gives perplexity). Each resample draws examples with replacement and
    recomputes both ratios. Zero-weight examples add nothing to either sum and are left
    out of the resampling (``samples`` still counts them); no positive weight gives NaN,
    one weighted example a degenerate interval at the point estimate.
    """
    n = len(weights)
    if not len(baseline_sums) == len(tuned_sums) == n:
        raise ValueError(
            f"paired samples differ in length: {len(baseline_sums)}, {len(tuned_sums)}, {n}"
        )
    _check(confidence, resamples)
    if any(w < 0 or not math.isfinite(w) for w in weights):
        raise ValueError("weights must be finite and non-negative")
    f = transform or _identity
    keep = [i for i, w in enumerate(weights) if w > 0]
    b_col = [float(baseline_sums[i]) for i in keep]
    t_col = [float(tuned_sums[i]) for i in keep]
    w_col = [float(weights[i]) for i in keep]
    if not keep:
        nan = math.nan
        return PairedInterval(nan, nan, nan, nan, nan, confidence, n)
    w_sum = math.fsum(w_col)
    base, tuned = f(math.fsum(b_col) / w_sum), f(math.fsum(t_col) / w_sum)
    delta = tuned - base
    if len(keep) == 1:
        return PairedInterval(base, tuned, delta, delta, delta, confidence, n)
    rng = random.Random(seed)
    positions = range(len(keep))
    deltas: list[float] = []
    for _ in range(resamples):
        idx = rng.choices(positions, k=len(keep))
        w_r = math.fsum(map(w_col.__getitem__, idx))
        b_r = f(math.fsum(map(b_col.__getitem__, idx)) / w_r)
        deltas.append(f(math.fsum(map(t_col.__getitem__, idx)) / w_r) - b_r)
    deltas.sort()
    alpha = (1.0 - confidence) / 2.0
    low, high = _quantile(deltas, alpha), _quantile(deltas, 1.0 - alpha)
    return PairedInterval(base, tuned, delta, low, high, confidence, n)
