"""The paired bootstraps (mean difference, token-weighted ratio difference): deterministic,
sensible on edge cases, and their 95% intervals cover the true difference about 95% of the
time."""

from __future__ import annotations

import math
import random
import time

import pytest

from kubetune.stats.bootstrap import paired_bootstrap, paired_ratio_bootstrap


def test_point_estimates_and_determinism() -> None:
    base = [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    tuned = [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    a = paired_bootstrap(base, tuned, seed=3)
    b = paired_bootstrap(base, tuned, seed=3)
    assert a == b
    assert a.baseline == pytest.approx(3 / 8)
    assert a.tuned == pytest.approx(6 / 8)
    assert a.delta == pytest.approx(3 / 8)
    assert a.low <= a.delta <= a.high
    assert a.low >= 0.0  # every difference is >= 0
    assert a.samples == 8
    rng = random.Random(0)
    noisy = [rng.random() for _ in range(30)]
    other = [v + rng.random() for v in noisy]
    seeded = paired_bootstrap(noisy, other, seed=3)
    assert paired_bootstrap(noisy, other, seed=3) == seeded
    assert paired_bootstrap(noisy, other, seed=4) != seeded  # the seed drives resampling


def test_degenerate_inputs() -> None:
    same = paired_bootstrap([0.5] * 5, [0.7] * 5)
    assert (same.low, same.delta, same.high) == pytest.approx((0.2, 0.2, 0.2))
    empty = paired_bootstrap([], [])
    assert empty.samples == 0 and math.isnan(empty.delta)
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1.0], [1.0], confidence=1.0)
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap([1.0], [1.0], resamples=5)


def test_wider_at_higher_confidence() -> None:
    rng = random.Random(1)
    base = [rng.gauss(0, 1) for _ in range(40)]
    tuned = [b + rng.gauss(0.3, 1) for b in base]
    narrow = paired_bootstrap(base, tuned, confidence=0.8)
    wide = paired_bootstrap(base, tuned, confidence=0.99)
    assert wide.high - wide.low > narrow.high - narrow.low


def test_coverage_of_the_95_percent_interval() -> None:
    """200 simulated evaluations with a known true difference of 0.1 in 0/1 accuracy."""
    started = time.monotonic()
    rng = random.Random(20261202)
    true_delta, n, trials, covered = 0.1, 120, 200, 0
    for trial in range(trials):
        base, tuned = [], []
        for _ in range(n):
            # correlated pairs: the tuned model mostly agrees with its baseline
            b = 1.0 if rng.random() < 0.5 else 0.0
            u = rng.random()
            # wrong -> right with p 0.3 (+0.15), right -> wrong with p 0.1 (-0.05)
            flip = u < (0.3 if b == 0.0 else 0.1)
            t = 1.0 - b if flip else b
            base.append(b)
            tuned.append(t)
        ci = paired_bootstrap(base, tuned, confidence=0.95, resamples=400, seed=trial)
        covered += ci.low <= true_delta <= ci.high
    coverage = covered / trials
    # binomial sd at p=0.95, 200 trials: 0.015; the percentile method runs slightly narrow
    assert 0.89 <= coverage <= 0.99, coverage
    assert time.monotonic() - started < 10.0


def _capped_exp(value: float) -> float:
    return math.exp(min(value, 50.0))


def test_ratio_agrees_with_the_corpus_point_estimate() -> None:
    rng = random.Random(7)
    weights = [float(rng.randint(1, 40)) for _ in range(60)]
    base = [w * rng.uniform(1.5, 2.5) for w in weights]
    tuned = [w * rng.uniform(1.2, 2.2) for w in weights]
    ci = paired_ratio_bootstrap(base, tuned, weights, seed=5)
    assert ci.baseline == pytest.approx(sum(base) / sum(weights))
    assert ci.tuned == pytest.approx(sum(tuned) / sum(weights))
    assert ci.delta == pytest.approx(ci.tuned - ci.baseline)
    assert ci.low <= ci.delta <= ci.high < 0.0  # every example improved
    assert ci.samples == 60
    assert paired_ratio_bootstrap(base, tuned, weights, seed=5) == ci
    assert paired_ratio_bootstrap(base, tuned, weights, seed=6) != ci
    ppl = paired_ratio_bootstrap(base, tuned, weights, transform=_capped_exp, seed=5)
    assert ppl.baseline == pytest.approx(math.exp(ci.baseline))
    assert ppl.delta == pytest.approx(math.exp(ci.tuned) - math.exp(ci.baseline))
    assert ppl.low <= ppl.delta <= ppl.high
    # a mean of per-example losses is a different (wrong) statistic: long examples count more
    per_example = sum(t / w - b / w for b, t, w in zip(base, tuned, weights, strict=True)) / 60
    assert ci.delta != pytest.approx(per_example)


def test_ratio_edge_cases() -> None:
    zero = paired_ratio_bootstrap([0.0, 3.0, 0.0], [0.0, 2.0, 0.0], [0.0, 2.0, 0.0])
    assert (zero.low, zero.delta, zero.high) == pytest.approx((-0.5, -0.5, -0.5))
    assert zero.samples == 3  # zero-weight examples are counted, not resampled
    empty = paired_ratio_bootstrap([], [], [])
    assert empty.samples == 0 and math.isnan(empty.delta)
    assert math.isnan(paired_ratio_bootstrap([0.0], [0.0], [0.0]).delta)
    capped = paired_ratio_bootstrap([60.0, 70.0], [80.0, 90.0], [1.0, 1.0], transform=_capped_exp)
    assert capped.delta == 0.0 and capped.baseline == math.exp(50.0)
    with pytest.raises(ValueError, match="length"):
        paired_ratio_bootstrap([1.0], [1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="weights"):
        paired_ratio_bootstrap([1.0], [1.0], [-1.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_ratio_bootstrap([1.0], [1.0], [1.0], confidence=0.0)


def test_coverage_of_the_95_percent_ratio_interval() -> None:
    """200 simulated held-out sets of 80 examples of 1-30 tokens: tuned per-token NLL is the
    baseline's minus 0.1 plus noise, so the true corpus-level difference is -0.1."""
    started = time.monotonic()
    rng = random.Random(20261203)
    true_delta, n, trials, covered = -0.1, 80, 200, 0
    for trial in range(trials):
        base, tuned, weights = [], [], []
        for _ in range(n):
            w = rng.randint(1, 30)
            level = rng.uniform(1.0, 3.0)  # example difficulty, shared by both models
            noise = 0.5 * math.sqrt(w)  # the sum of w per-token deviations of sd 0.5
            base.append(w * level + rng.gauss(0, noise))
            tuned.append(w * (level + true_delta) + rng.gauss(0, noise))
            weights.append(float(w))
        ci = paired_ratio_bootstrap(base, tuned, weights, resamples=300, seed=trial)
        covered += ci.low <= true_delta <= ci.high
    coverage = covered / trials
    assert 0.89 <= coverage <= 0.99, coverage
    assert time.monotonic() - started < 10.0
