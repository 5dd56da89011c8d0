"""Wald's sequential probability ratio test on a candidate-minus-baseline difference.

Used by ModelRollout's sequential metrics: at every analysis interval Prometheus gives the
cumulative counts of both models since the candidate first got traffic (successes and
trials for a share; sum, count and sum of squares for a mean score), and the test says
*Worse*, *NotWorse* or *Undecided* (keep measuring).

The approximation, and why it is a valid sequential test
---------------------------------------------------------
Let ``g`` be the candidate's degradation: ``baseline - candidate`` when higher is better,
``candidate - baseline`` when lower is better, estimated by the difference of the two
cumulative means with variance ``V = var_c / n_c + var_b / n_b``. H0 says ``g = 0`` (as good),
H1 says ``g = mde`` (worse by the minimum detectable effect). With ``g_hat ~ N(g, V)`` the log
likelihood ratio of H1 against H0 is::

    llr = (g_hat**2 - (g_hat - mde)**2) / (2 V) = mde * (g_hat - mde / 2) / V

In information time ``I = 1 / V`` the score ``S = g_hat * I`` of cumulative data is, by the
central limit theorem, approximately a Brownian motion with drift ``g`` (independent
increments: each interval adds new, independent trials), and ``llr = mde * S - mde**2 I / 2``
is then exactly the log likelihood ratio of "drift mde" against "drift 0" for the path seen
so far. Wald's bounds ``A = log((1 - beta) / alpha)`` (stop, Worse) and
``B = log(beta / (1 - alpha))`` (stop, NotWorse) keep the error rates at or below about alpha
and beta for such a process; looking only once per interval adds overshoot, which makes the
test a little conservative (lower error rates, slightly more samples), never less so. The
unit tests check both error rates by simulation.

Assumptions: trials are independent and the normal approximation holds (a few dozen
trials per model: set ``minSamples``; below it the test stays Undecided), and the variance is
estimated by plug-in from the data at each look (a standard, slightly anti-conservative
simplification for small ``n`` that ``minSamples`` also guards).

Variance floors (which one, and why): a share of exactly 0 or 1 (no failures yet) has
plug-in variance 0, which would make a single look decisive. Shares therefore use the
smoothed estimate ``p~ = (x + 1/2) / (n + 1)`` for the *variance only* (Jeffreys-style; the
difference itself uses the raw shares), and the candidate's variance is at least
``p1 (1 - p1)`` with ``p1`` the candidate's share under H1 (the baseline's share moved by mde
the worse way): near 0 or 1 the plug-in variance of a worse candidate is underestimated in
small samples, which the simulations showed as a false-NotWorse rate of 10 % at beta = 5 %
(baseline 0.97, mde 0.03) without it and 1.3 % with it. Means floor each model's
per-observation variance at
``(mde / 10) ** 2``: a spread that small decides within a few dozen samples anyway, and
over-estimating the variance only makes the test slower, never less accurate.

Pure Python: the operator image has no numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Decision = Literal["Undecided", "NotWorse", "Worse"]

#: Means: floor of each model's per-observation variance, as a fraction of mde**2.
MEAN_VARIANCE_FLOOR = 0.01


@dataclass(frozen=True)
class Moments:
    """One model's cumulative sample: size, mean and per-observation variance."""

    n: float
    mean: float
    variance: float


@dataclass(frozen=True)
class SprtResult:
    """The test at one look. ``degradation`` is ``g_hat`` (positive: candidate worse)."""

    decision: Decision
    llr: float | None
    lower: float
    upper: float
    degradation: float | None = None
    std_error: float | None = None


def bounds(alpha: float, beta: float) -> tuple[float, float]:
    """Wald's (lower, upper) bounds on the log likelihood ratio."""
    if not (0 < alpha < 1 and 0 < beta < 1 and alpha + beta < 1):
        raise ValueError(f"need 0 < alpha, beta and alpha + beta < 1 (got {alpha}, {beta})")
    return math.log(beta / (1 - alpha)), math.log((1 - beta) / alpha)


def proportion_moments(successes: float, total: float) -> Moments:
    """Moments of a share; counts are clamped (``increase()`` may extrapolate slightly)."""
    n = max(0.0, total)
    x = min(max(0.0, successes), n)
    if n <= 0:
        return Moments(0.0, math.nan, math.nan)
    smoothed = (x + 0.5) / (n + 1)
    return Moments(n, x / n, smoothed * (1 - smoothed))


def mean_moments(total: float, count: float, sum_of_squares: float) -> Moments:
    """Moments of a score from its sum, count and sum of squares (sample variance)."""
    n = max(0.0, count)
    if n <= 0:
        return Moments(0.0, math.nan, math.nan)
    mean = total / n
    variance = max(0.0, sum_of_squares - total * mean) / (n - 1) if n > 1 else math.nan
    return Moments(n, mean, variance)


def log_likelihood_ratio(degradation: float, variance: float, mde: float) -> float:
    """log LR of H1 (degradation = mde) against H0 (degradation = 0), g_hat ~ N(g, V)."""
    return (degradation**2 - (degradation - mde) ** 2) / (2 * variance)


def sprt(
    candidate: Moments,
    baseline: Moments,
    *,
    mde: float,
    alpha: float,
    beta: float,
    higher_is_better: bool,
    min_samples: float = 0,
    variance_floor: float = 0.0,
    proportion: bool = False,
) -> SprtResult:
    """The test's decision at this look; Undecided (llr None) without enough data.

    ``variance_floor`` is a per-observation floor for each model (means pass
    ``MEAN_VARIANCE_FLOOR * mde**2``); ``proportion``: the moments are shares (from
    :func:`proportion_moments`), so the candidate's variance is floored at its H1 value.
    """
    if mde <= 0:
        raise ValueError(f"minimum detectable effect must be positive, got {mde}")
    lower, upper = bounds(alpha, beta)
    need = max(min_samples, 1.0)
    enough = [m.n >= need and math.isfinite(m.mean + m.variance) for m in (candidate, baseline)]
    if not all(enough):
        return SprtResult("Undecided", None, lower, upper)
    diff = candidate.mean - baseline.mean
    degradation = -diff if higher_is_better else diff
    candidate_variance = max(candidate.variance, variance_floor)
    if proportion:  # at least the variance the candidate would have under H1
        worse = baseline.mean - mde if higher_is_better else baseline.mean + mde
        p1 = min(max(worse, 0.0), 1.0)
        candidate_variance = max(candidate_variance, p1 * (1 - p1))
    variance = candidate_variance / candidate.n
    variance += max(baseline.variance, variance_floor) / baseline.n
    if variance <= 0:  # only with a zero floor and constant data: no spread to test against
        return SprtResult("Undecided", None, lower, upper, degradation, 0.0)
    llr = log_likelihood_ratio(degradation, variance, mde)
    decision: Decision = "Worse" if llr >= upper else "NotWorse" if llr <= lower else "Undecided"
    return SprtResult(decision, llr, lower, upper, degradation, math.sqrt(variance))
