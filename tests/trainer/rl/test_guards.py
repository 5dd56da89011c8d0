"""Reward-hacking guards: the KL ceiling stops the run, length and reward divergence warn."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune.contract import classify_exit_code
from kubetune_trainer.errors import NumericalDivergenceError
from kubetune_trainer.rl.guards import (
    Guards,
    GuardWarning,
    KLCeilingGuard,
    LengthDriftGuard,
    RewardDivergenceGuard,
    fitted_change,
)


def _round_trip(state: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """Through a checkpoint file, loaded the way resumes load it."""
    path = tmp_path / "guards.pt"
    torch.save(state, path)
    loaded: dict[str, Any] = torch.load(path, weights_only=True)
    return loaded


# --- KL ceiling ---------------------------------------------------------------------------


def test_kl_ceiling_stops_exactly_on_the_nth_consecutive_step() -> None:
    guard = KLCeilingGuard(ceiling=0.2, for_steps=5)
    for step in range(1, 41):
        guard.observe(step, 0.1)
    for step in range(41, 45):
        guard.observe(step, 0.31)  # 4 in a row: not yet
    with pytest.raises(NumericalDivergenceError) as info:
        guard.observe(45, 0.31)
    error = info.value
    assert classify_exit_code(error.exit_code) == "permanent"
    assert "0.31 > ceiling 0.2 for 5 consecutive steps (steps 41-45" in error.message
    assert "KL 0.31, 0.31, 0.31, 0.31, 0.31" in error.message
    assert "learning rate" in error.message and "KL coefficient" in error.message


def test_kl_ceiling_dip_resets_the_streak() -> None:
    guard = KLCeilingGuard(ceiling=0.2, for_steps=3)
    guard.observe(1, 0.5)
    guard.observe(2, 0.5)
    guard.observe(3, 0.2)  # exactly at the ceiling is not above it: reset
    guard.observe(4, 0.4)
    guard.observe(5, 0.4)
    with pytest.raises(NumericalDivergenceError, match=r"for 3 consecutive steps \(steps 4-6"):
        guard.observe(6, 0.45)


def test_kl_ceiling_nan_does_not_reset() -> None:
    guard = KLCeilingGuard(ceiling=0.2, for_steps=3)
    guard.observe(1, 0.3)
    guard.observe(2, float("nan"))
    with pytest.raises(NumericalDivergenceError, match="steps 1-3"):
        guard.observe(3, 0.3)


def test_kl_ceiling_resume_mid_streak_continues_the_count(tmp_path: Path) -> None:
    guard = KLCeilingGuard(ceiling=0.2, for_steps=5)
    guard.observe(40, 0.1)
    for step in (41, 42, 43):
        guard.observe(step, 0.3)
    resumed = KLCeilingGuard(ceiling=0.2, for_steps=5)
    resumed.load_state_dict(_round_trip(guard.state_dict(), tmp_path))
    resumed.observe(44, 0.3)  # 4th: not yet
    with pytest.raises(NumericalDivergenceError, match=r"5 consecutive steps \(steps 41-45"):
        resumed.observe(45, 0.3)


# --- length drift -------------------------------------------------------------------------


def test_length_drift_baseline_is_the_first_steps_only_and_fires_once_per_episode() -> None:
    guard = LengthDriftGuard(baseline_steps=4, max_ratio=1.5, for_steps=3)
    for step, length in enumerate([100.0, 100.0, 120.0, 80.0], start=1):
        assert guard.observe(step, length) is None
    assert guard.baseline == 100.0
    # Inside the band [66.7, 150]. A baseline that kept averaging would reach 124 here and
    # its limit 186 would hide the 160s below.
    for step in range(5, 11):
        assert guard.observe(step, 140.0) is None
    assert guard.observe(11, 160.0) is None
    assert guard.observe(12, 160.0) is None
    warning = guard.observe(13, 160.0)
    assert warning is not None
    assert warning.guard == "length_drift" and warning.step == 13
    assert warning.values == {"mean_length": 160.0, "baseline": 100.0, "ratio": 1.6}
    assert "1.60x the baseline 100.0 (mean of steps 1-4)" in warning.reason
    assert "3 consecutive steps (steps 11-13)" in warning.reason
    assert "length bias" in warning.reason
    for step in range(14, 20):  # same episode: no repeat
        assert guard.observe(step, 170.0) is None
    assert guard.observe(20, 100.0) is None  # back to normal clears it
    assert guard.observe(21, 160.0) is None
    assert guard.observe(22, 160.0) is None
    second = guard.observe(23, 160.0)
    assert second is not None and "steps 21-23" in second.reason


def test_length_drift_collapse_and_direction_flip() -> None:
    guard = LengthDriftGuard(baseline_steps=2, max_ratio=2.0, for_steps=2)
    guard.observe(1, 100.0)
    guard.observe(2, 100.0)
    assert guard.observe(3, 250.0) is None  # above, 1 of 2
    assert guard.observe(4, 40.0) is None  # flipped below: a new count, 1 of 2
    warning = guard.observe(5, 40.0)
    assert warning is not None
    assert warning.values["ratio"] == pytest.approx(0.4)
    assert "below the limit 1/2x" in warning.reason and "steps 4-5" in warning.reason


def test_sabotaged_reward_paying_for_length_trips_the_length_guard() -> None:
    """A reward model that pays 0.01 per token: length grows 2 % a step, reward with it."""
    guards = Guards(
        kl_ceiling=KLCeilingGuard(ceiling=10.0, for_steps=3),
        length_drift=LengthDriftGuard(baseline_steps=10, max_ratio=1.5, for_steps=5),
    )
    fired: list[GuardWarning] = []
    for step in range(1, 61):
        length = 100.0 * 1.02 ** (step - 1)
        fired += guards.observe(step, kl=0.05, mean_length=length, reward=0.01 * length)
    # baseline = 100 (1.02^10 - 1) / 0.2 = 109.497; limit 164.246 is first exceeded by
    # 100 * 1.02^26 = 167.36 at step 27, the 5th step in a row is step 31.
    assert [w.step for w in fired] == [31]
    assert fired[0].values["baseline"] == pytest.approx(109.4972, abs=1e-4)
    assert fired[0].values["mean_length"] == pytest.approx(100.0 * 1.02**30)


# --- reward divergence --------------------------------------------------------------------


def test_fitted_change_hand_computed() -> None:
    # slope 1.5 over x in [0, 2] -> 3.0; endpoints alone would also say 3.0
    assert fitted_change([0.0, 1.0, 2.0], [0.0, 3.0, 3.0]) == pytest.approx(3.0)
    # a spike in the middle and flat ends: no trend (endpoints agree), LS says 0 too
    assert fitted_change([0.0, 1.0, 2.0], [0.0, 3.0, 0.0]) == pytest.approx(0.0)
    # sxy = 6, sxx = 5: slope 1.2 over x in [0, 3] -> 3.6 (first-vs-last would say 4)
    assert fitted_change([0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 4.0]) == pytest.approx(3.6)
    assert fitted_change([5.0, 5.0], [1.0, 2.0]) == 0.0


def test_reward_divergence_pairs_heldout_with_the_mean_reward_since_last_eval() -> None:
    guard = RewardDivergenceGuard(window=3, min_rise=0.99, min_fall=0.99)
    rewards = [0.0, 2.0, 3.0, 1.0, 4.0, 0.0]
    heldout = {2: 1.0, 4: 0.5, 6: 0.0}
    results = [guard.observe(s, r, heldout.get(s)) for s, r in enumerate(rewards, start=1)]
    assert results[:5] == [None] * 5
    warning = results[5]
    assert warning is not None and warning.guard == "reward_divergence"
    # interval means 1, 2, 2 at x = 2, 4, 6: LS change 1.0 (the rewards at the evaluation
    # steps alone, 2, 1, 0, would give -2.0 and no warning)
    assert warning.values["train_reward_rise"] == pytest.approx(1.0)
    assert warning.values["heldout_change"] == pytest.approx(-1.0)
    assert "last 3 held-out evaluations (steps 2-6)" in warning.reason


TRAIN_NOISE, HELDOUT_NOISE, EVERY, STEPS, WINDOW, MIN_RISE, MIN_FALL = (
    0.15,
    0.05,
    10,
    300,
    6,
    0.2,
    0.15,
)


def _simulate(
    seed: int, reward_trend: float, heldout_before: float, heldout_after: float
) -> list[int]:
    """Steps at which the guard warns on a run with linear trends (per step) plus noise.

    Both signals are a random walk (per-step sd 0.01 for the reward, per-evaluation sd
    0.02 for the held-out score, evaluated every 10 steps) plus observation noise; the
    held-out score's trend is ``heldout_before`` up to step 100, ``heldout_after`` from it.
    """
    rng = random.Random(seed)
    guard = RewardDivergenceGuard(WINDOW, MIN_RISE, MIN_FALL)
    walk_t = walk_h = 0.0
    fired = []
    for step in range(1, STEPS + 1):
        walk_t += rng.gauss(0.0, 0.01)
        heldout = None
        if step % EVERY == 0:
            walk_h += rng.gauss(0.0, 0.02)
            trend = heldout_before * min(step, 100) + heldout_after * max(step - 100, 0)
            heldout = walk_h + trend + rng.gauss(0.0, HELDOUT_NOISE)
        reward = walk_t + reward_trend * step + rng.gauss(0.0, TRAIN_NOISE)
        if guard.observe(step, reward, heldout) is not None:
            fired.append(step)
    return fired


@pytest.mark.parametrize("seed", range(5))
def test_reward_divergence_fires_on_a_hacked_run(seed: int) -> None:
    # reward +0.3 per window (50 steps); held-out +0.2 per window, then -0.2 from step 100
    fired = _simulate(seed, 0.006, heldout_before=0.004, heldout_after=-0.004)
    assert fired, "a hacked run must warn"
    assert 100 < fired[0] <= 200  # after the hacking starts, within two windows


@pytest.mark.parametrize("seed", range(5))
def test_reward_divergence_quiet_on_a_healthy_run(seed: int) -> None:
    assert _simulate(seed, 0.006, heldout_before=0.004, heldout_after=0.004) == []


def test_reward_divergence_false_alarms_on_trendless_noise_are_rare() -> None:
    """Bound: at most 2 of 50 trendless runs warn (4 %; measured 0.2 % over 1000 seeds).

    Under the same noise the naive detector (reward at the last evaluation minus the first
    of the window, same for the held-out score) fires in 17 % of runs, so the guard's
    quiet comes from its averaging, not from noise too small to matter.
    """
    runs_with_alarm = sum(bool(_simulate(seed, 0.0, 0.0, 0.0)) for seed in range(50))
    assert runs_with_alarm <= 2


def test_reward_divergence_warns_once_per_episode() -> None:
    guard = RewardDivergenceGuard(window=3, min_rise=0.5, min_fall=0.5)
    fired = []
    # diverging for evaluations 1-6, then the held-out score recovers, then diverges again
    heldout = [0.0, -1.0, -2.0, -3.0, -4.0, -5.0, 5.0, 15.0, 25.0, 24.0, 23.0]
    for i, score in enumerate(heldout, start=1):
        if guard.observe(i, float(i), score) is not None:
            fired.append(i)
    assert fired == [3, 11]


# --- facade and checkpoints ---------------------------------------------------------------


def _run_facade(steps: range, guards: Guards) -> list[tuple[int, str]]:
    out = []
    for step in steps:
        length = 100.0 if step <= 20 else 200.0
        heldout = -0.1 * step if step % 5 == 0 else None
        warnings = guards.observe(
            step, kl=0.1, mean_length=length, reward=0.05 * step, heldout_score=heldout
        )
        out += [(w.step, w.guard) for w in warnings]
    return out


def _make_guards() -> Guards:
    return Guards(
        kl_ceiling=KLCeilingGuard(0.2, 3),
        length_drift=LengthDriftGuard(baseline_steps=5, max_ratio=1.5, for_steps=4),
        reward_divergence=RewardDivergenceGuard(window=4, min_rise=0.5, min_fall=0.5),
    )


@pytest.mark.parametrize("split", [3, 12, 22, 33])
def test_facade_resume_matches_an_uninterrupted_run(split: int, tmp_path: Path) -> None:
    expected = _run_facade(range(1, 41), _make_guards())
    # held-out every 5 steps: 4 evaluations fill the window at step 20 and the reward rose
    # 0.05 * 15 = 0.75 while the score fell 1.5; lengths double at 21, 4th step is 24
    assert expected == [(20, "reward_divergence"), (24, "length_drift")]
    first = _make_guards()
    got = _run_facade(range(1, split + 1), first)
    resumed = _make_guards()
    resumed.load_state_dict(_round_trip(first.state_dict(), tmp_path))
    got += _run_facade(range(split + 1, 41), resumed)
    assert got == expected


def test_facade_with_disabled_guards_and_changed_settings() -> None:
    only_length = Guards(length_drift=LengthDriftGuard(5, 1.5, 4))
    assert only_length.observe(1, kl=99.0, mean_length=10.0, reward=0.0) == []
    assert set(only_length.state_dict()) == {"length_drift"}
    # a guard enabled since the checkpoint starts fresh instead of failing the resume
    full = _make_guards()
    full.load_state_dict(only_length.state_dict())
    assert full.length_drift is not None and full.length_drift.baseline_sum == 10.0
    assert full.kl_ceiling is not None and full.kl_ceiling.streak_values == []
    with pytest.raises(ValueError, match="missing"):
        KLCeilingGuard(0.2, 3).load_state_dict({"streak_start": 4})


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: KLCeilingGuard(float("inf"), 3), "finite"),
        (lambda: KLCeilingGuard(0.2, 0), "for_steps"),
        (lambda: LengthDriftGuard(5, 1.0, 3), "max_ratio"),
        (lambda: RewardDivergenceGuard(2, 0.1, 0.1), "window"),
        (lambda: RewardDivergenceGuard(5, 0.0, 0.1), "min_rise"),
    ],
)
def test_invalid_settings_raise(make: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()
