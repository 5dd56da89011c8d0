"""KL estimators, KL-coefficient controllers and KL-penalised rewards."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from kubetune_trainer.rl.kl import (
    AdaptiveKLController,
    FixedKLController,
    KLController,
    kl_penalized_rewards,
    kl_per_token,
)

LN2 = math.log(2.0)


@pytest.mark.parametrize(
    ("estimator", "expected"),
    [
        # token a: p=0.5, q=0.25 (log p - log q = ln 2); token b: p=0.25, q=0.5 (-ln 2)
        ("k1", [LN2, -LN2]),
        ("k2", [0.5 * LN2**2, 0.5 * LN2**2]),
        # r = q/p: a: (0.5 - 1) - ln 0.5 = 0.193147; b: (2 - 1) - ln 2 = 0.306853
        ("k3", [-0.5 + LN2, 1.0 - LN2]),
    ],
)
def test_kl_estimators_hand_computed(estimator: str, expected: list[float]) -> None:
    logp = torch.tensor([math.log(0.5), math.log(0.25)], dtype=torch.float64)
    logq = torch.tensor([math.log(0.25), math.log(0.5)], dtype=torch.float64)
    kl = kl_per_token(logp, logq, estimator)  # type: ignore[arg-type]
    torch.testing.assert_close(kl, torch.tensor(expected, dtype=torch.float64))


def test_kl_unknown_estimator_raises() -> None:
    with pytest.raises(ValueError, match="estimator"):
        kl_per_token(torch.zeros(2), torch.zeros(2), "k4")  # type: ignore[arg-type]


def test_k3_is_non_negative() -> None:
    gen = torch.Generator().manual_seed(0)
    logp = 3 * torch.randn(10_000, generator=gen, dtype=torch.float64)
    logq = 3 * torch.randn(10_000, generator=gen, dtype=torch.float64)
    assert kl_per_token(logp, logq, "k3").min().item() >= 0.0


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_unbiased_estimators_approximate_true_kl(estimator: str) -> None:
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    q = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    true_kl = (p * (p / q).log()).sum().item()  # 0.4564
    gen = torch.Generator().manual_seed(1234)
    samples = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    kl = kl_per_token(p.log()[samples], q.log()[samples], estimator)  # type: ignore[arg-type]
    # tolerance: 4 standard errors of the Monte-Carlo mean (about 0.005 for k3)
    tolerance = 4 * kl.std().item() / math.sqrt(kl.numel())
    assert abs(kl.mean().item() - true_kl) < tolerance


def test_adaptive_controller_one_update_hand_computed() -> None:
    ctl = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10_000)
    ctl.update(current_kl=6.6, n_steps=256)
    # error = 6.6/6 - 1 = 0.1; mult = 1 + 0.1 * 256 / 10000 = 1.00256
    assert ctl.value == pytest.approx(0.2 * 1.00256)


@pytest.mark.parametrize(
    ("current_kl", "mult"),
    [(100.0, 1 + 0.2 * 256 / 10_000), (0.0, 1 - 0.2 * 256 / 10_000)],
    ids=["clip-high", "clip-low"],
)
def test_adaptive_controller_clips_error(current_kl: float, mult: float) -> None:
    ctl = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10_000)
    ctl.update(current_kl=current_kl, n_steps=256)
    assert ctl.value == pytest.approx(0.2 * mult)


def test_adaptive_controller_accepts_tensor_kl() -> None:
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    ctl.update(torch.tensor(6.6), n_steps=256)  # type: ignore[arg-type]
    assert isinstance(ctl.value, float)
    assert ctl.value == pytest.approx(0.2 * 1.00256)


def test_adaptive_controller_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.2, target=0.0, horizon=10_000)


def test_fixed_controller_update_is_noop() -> None:
    ctl = FixedKLController(0.05)
    ctl.update(current_kl=100.0, n_steps=256)
    assert ctl.value == 0.05


def test_controllers_satisfy_protocol() -> None:
    assert isinstance(AdaptiveKLController(0.2, 6.0, 10_000), KLController)
    assert isinstance(FixedKLController(0.1), KLController)


def test_adaptive_state_survives_resume(tmp_path: Path) -> None:
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    for kl in (7.0, 8.0, 5.5):
        ctl.update(kl, n_steps=512)
    torch.save(ctl.state_dict(), tmp_path / "kl.pt")
    resumed = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    resumed.load_state_dict(torch.load(tmp_path / "kl.pt", weights_only=True))
    assert resumed.value == ctl.value != 0.2
    ctl.update(9.0, n_steps=512)
    resumed.update(9.0, n_steps=512)
    assert resumed.value == ctl.value


def test_fixed_state_round_trip_and_bad_state() -> None:
    resumed = FixedKLController(0.3)
    resumed.load_state_dict(FixedKLController(0.05).state_dict())
    assert resumed.value == 0.05
    with pytest.raises(ValueError, match="value"):
        resumed.load_state_dict({"coef": 0.1})


def test_kl_penalized_rewards_score_on_last_valid_token() -> None:
    logprobs = torch.tensor([[-1.0, -2.0, -1.0, -0.5], [-1.0, -1.0, -7.0, -7.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -0.5, -0.5], [-1.2, -0.8, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    scores = torch.tensor([1.0, 2.0])
    rewards, kl = kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.1)
    # k1 = logp - logq: row 0 [0.5, 0, -0.5, 0]; row 1 [0.2, -0.2] then padding
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, -0.5, 0.0], [0.2, -0.2, 0.0, 0.0]]))
    # -0.1 * kl, plus score 1.0 at index 3 (row 0) and 2.0 at index 1 (row 1)
    torch.testing.assert_close(
        rewards, torch.tensor([[-0.05, 0.0, 0.05, 1.0], [-0.02, 2.02, 0.0, 0.0]])
    )


def test_kl_penalized_rewards_with_k3_masks_padding() -> None:
    gen = torch.Generator().manual_seed(3)
    logprobs = -torch.rand(3, 5, generator=gen)
    ref_logprobs = -torch.rand(3, 5, generator=gen)
    mask = (torch.arange(5)[None, :] < torch.tensor([[5], [3], [1]])).float()
    scores = torch.tensor([0.5, -1.0, 3.0])
    rewards, kl = kl_penalized_rewards(
        scores, logprobs, ref_logprobs, mask, kl_coef=0.2, estimator="k3"
    )
    expected_kl = kl_per_token(logprobs, ref_logprobs, "k3") * mask
    expected = -0.2 * expected_kl
    expected[0, 4] += 0.5
    expected[1, 2] -= 1.0
    expected[2, 0] += 3.0
    torch.testing.assert_close(kl, expected_kl)
    torch.testing.assert_close(rewards, expected)


def test_kl_penalized_rewards_rejects_empty_row() -> None:
    mask = torch.tensor([[1, 1], [0, 0]])
    with pytest.raises(ValueError, match="no valid"):
        kl_penalized_rewards(torch.zeros(2), torch.zeros(2, 2), torch.zeros(2, 2), mask, 0.1)
