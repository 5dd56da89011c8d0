"""Wald's SPRT on candidate minus baseline: the formula, the edge cases, and the error rates
it promises, checked by simulating whole rollouts (seeded, a few seconds)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import pytest

from kubetune.stats.sprt import (
    MEAN_VARIANCE_FLOOR,
    Moments,
    bounds,
    log_likelihood_ratio,
    mean_moments,
    proportion_moments,
    sprt,
)


def test_bounds_are_walds() -> None:
    lower, upper = bounds(0.05, 0.1)
    assert lower == pytest.approx(math.log(0.1 / 0.95))
    assert upper == pytest.approx(math.log(0.9 / 0.05))
    with pytest.raises(ValueError):
        bounds(0.6, 0.5)


def test_llr_is_the_normal_likelihood_ratio() -> None:
    # log N(d; mde, V) - log N(d; 0, V)
    d, v, mde = 0.03, 0.0004, 0.05
    expected = (-((d - mde) ** 2) + d**2) / (2 * v)
    assert log_likelihood_ratio(d, v, mde) == pytest.approx(expected)
    assert log_likelihood_ratio(mde / 2, v, mde) == pytest.approx(0.0)  # midway: no evidence


def test_moments() -> None:
    share = proportion_moments(80, 100)
    assert (share.n, share.mean) == (100, 0.8)
    assert share.variance == pytest.approx((80.5 / 101) * (20.5 / 101))
    perfect = proportion_moments(50, 50)
    assert perfect.mean == 1.0 and perfect.variance > 0  # smoothed, never zero
    clamped = proportion_moments(12, 10)  # extrapolated counters may overshoot
    assert clamped.mean == 1.0
    scores = [0.2, 0.4, 0.9, 0.5]
    m = mean_moments(sum(scores), len(scores), sum(x * x for x in scores))
    mean = sum(scores) / 4
    assert m.mean == pytest.approx(mean)
    assert m.variance == pytest.approx(sum((x - mean) ** 2 for x in scores) / 3)
    assert math.isnan(mean_moments(0, 0, 0).mean)


def test_direction_and_decisions() -> None:
    good = Moments(2000, 0.80, 0.16)
    bad = Moments(2000, 0.70, 0.21)
    kwargs: dict[str, Any] = {"mde": 0.05, "alpha": 0.05, "beta": 0.05}
    assert sprt(bad, good, higher_is_better=True, **kwargs).decision == "Worse"
    assert sprt(good, good, higher_is_better=True, **kwargs).decision == "NotWorse"
    # lower is better: a candidate with the *lower* value is the better one
    assert sprt(bad, good, higher_is_better=False, **kwargs).decision == "NotWorse"
    assert sprt(good, bad, higher_is_better=False, **kwargs).decision == "Worse"
    small = Moments(30, 0.5, 0.25)
    undecided = sprt(small, small, higher_is_better=True, **kwargs)
    assert undecided.decision == "Undecided" and undecided.llr is not None
    too_few = sprt(bad, small, higher_is_better=True, min_samples=50, **kwargs)
    assert too_few.decision == "Undecided" and too_few.llr is None
    empty = sprt(proportion_moments(0, 0), good, higher_is_better=True, **kwargs)
    assert empty.decision == "Undecided" and empty.llr is None


def test_zero_variance_is_floored_for_means() -> None:
    same = Moments(100, 1.0, 0.0)
    result = sprt(
        same,
        same,
        mde=0.1,
        alpha=0.05,
        beta=0.05,
        higher_is_better=True,
        variance_floor=MEAN_VARIANCE_FLOOR * 0.1**2,
    )
    assert result.llr is not None and math.isfinite(result.llr)
    assert result.decision == "NotWorse"


# -- simulated rollouts ---------------------------------------------------------------------
@dataclass
class Summary:
    worse: int
    not_worse: int
    undecided: int
    mean_candidate_trials: float

    def rate(self, decision: str, runs: int) -> float:
        return {"Worse": self.worse, "NotWorse": self.not_worse}[decision] / runs


def simulate(
    *,
    runs: int,
    seed: int,
    kind: str,
    baseline: float,
    candidate: float,
    mde: float,
    alpha: float = 0.05,
    beta: float = 0.05,
    per_interval: tuple[int, int] = (20, 80),
    min_samples: int = 50,
    max_intervals: int = 400,
) -> Summary:
    """Rollouts that look at cumulative counts once per interval, as the controller does.

    Proportion: Bernoulli feedback with share ``baseline`` / ``candidate``. Mean: scores
    uniform on ``[mu - 0.5, mu + 0.5]`` (a bounded reward score, sd 0.29).
    """
    rng = random.Random(seed)
    counts = {"Worse": 0, "NotWorse": 0, "Undecided": 0}
    trials = 0.0
    for _ in range(runs):
        acc = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]  # per model: n, sum, sum of squares
        decision = "Undecided"
        for _ in range(max_intervals):
            for arm, (mu, n) in enumerate(zip((candidate, baseline), per_interval, strict=True)):
                for _ in range(n):
                    if kind == "Proportion":
                        x = 1.0 if rng.random() < mu else 0.0
                    else:
                        x = mu + rng.random() - 0.5
                    acc[arm][0] += 1
                    acc[arm][1] += x
                    acc[arm][2] += x * x
            if kind == "Proportion":
                c, b = (proportion_moments(a[1], a[0]) for a in acc)
                floor = 0.0
            else:
                c, b = (mean_moments(a[1], a[0], a[2]) for a in acc)
                floor = MEAN_VARIANCE_FLOOR * mde**2
            result = sprt(
                c,
                b,
                mde=mde,
                alpha=alpha,
                beta=beta,
                higher_is_better=True,
                min_samples=min_samples,
                variance_floor=floor,
                proportion=kind == "Proportion",
            )
            decision = result.decision
            if decision != "Undecided":
                break
        counts[decision] += 1
        trials += acc[0][0]
    return Summary(counts["Worse"], counts["NotWorse"], counts["Undecided"], trials / runs)


RUNS = 300
#: Three standard errors of a 5 % rate over 300 runs.
TOLERANCE = 3 * math.sqrt(0.05 * 0.95 / RUNS)


@pytest.mark.parametrize(
    ("kind", "baseline", "mde"),
    # 0.97: near 1 the plug-in variance of a worse candidate is too small without the H1 floor
    [("Proportion", 0.8, 0.05), ("Proportion", 0.97, 0.03), ("Mean", 0.5, 0.05)],
)
def test_error_rates_by_simulation(kind: str, baseline: float, mde: float) -> None:
    equal = simulate(runs=RUNS, seed=1, kind=kind, baseline=baseline, candidate=baseline, mde=mde)
    worse = simulate(
        runs=RUNS, seed=2, kind=kind, baseline=baseline, candidate=baseline - mde, mde=mde
    )
    print(f"\n{kind}: equal {equal}\n{kind}: worse by MDE {worse}")
    # a candidate as good as the baseline is rolled back at most alpha of the time
    assert equal.rate("Worse", RUNS) <= 0.05 + TOLERANCE
    # a candidate worse by the MDE passes at most beta of the time
    assert worse.rate("NotWorse", RUNS) <= 0.05 + TOLERANCE
    # and the test does stop: almost every rollout decides within the horizon
    assert equal.undecided + worse.undecided <= 0.02 * 2 * RUNS
    # detection is fast for a much worse candidate
    far = simulate(
        runs=100, seed=3, kind=kind, baseline=baseline, candidate=baseline - 3 * mde, mde=mde
    )
    assert far.worse >= 99
    assert far.mean_candidate_trials < worse.mean_candidate_trials
