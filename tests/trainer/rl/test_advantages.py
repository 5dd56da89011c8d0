"""Advantage maths of PPO/GRPO/RLOO against hand-computed numbers and a slow reference."""

from __future__ import annotations

import pytest
import torch

from kubetune_trainer.rl.advantages import (
    gae,
    group_relative_advantages,
    leave_one_out_advantages,
    masked_mean,
    masked_var,
    masked_whiten,
)


def test_masked_mean_and_var_ignore_masked_entries() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert masked_mean(values, mask).item() == pytest.approx(2.0)
    # deviations -1, 0, 1: sum of squares 2; unbiased 2/(3-1) = 1, biased 2/3
    assert masked_var(values, mask).item() == pytest.approx(1.0)
    assert masked_var(values, mask, unbiased=False).item() == pytest.approx(2 / 3)


def test_masked_mean_along_dim() -> None:
    values = torch.tensor([[1.0, 3.0, 50.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(masked_mean(values, mask, dim=1), torch.tensor([2.0, 5.0]))


@pytest.mark.parametrize("kept", [0, 1])
def test_masked_var_undefined_raises(kept: int) -> None:
    mask = torch.zeros(1, 4)
    mask[0, :kept] = 1
    with pytest.raises(ValueError, match="masked_var"):
        masked_var(torch.randn(1, 4), mask)


def test_masked_var_biased_single_entry_is_zero() -> None:
    assert masked_var(torch.tensor([3.0, 9.0]), torch.tensor([1.0, 0.0]), unbiased=False) == 0


def _random_masked(seed: int, batch: int = 5, length: int = 7) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    lengths[0] = length  # at least one full row, so the batch covers the whole width
    mask = (torch.arange(length)[None, :] < lengths[:, None]).to(torch.float64)
    rewards = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    values = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    return rewards, values, mask


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_unit_variance_and_zero_padding(shift_mean: bool) -> None:
    values, _, mask = _random_masked(0)
    values = 3.0 * values + 5.0
    whitened = masked_whiten(values, mask, shift_mean=shift_mean)
    expected_mean = 0.0 if shift_mean else masked_mean(values, mask).item()
    assert masked_mean(whitened, mask).item() == pytest.approx(expected_mean, abs=1e-9)
    assert masked_var(whitened, mask).item() == pytest.approx(1.0, rel=1e-6)
    # documented choice: masked-out entries are zero, not transformed padding
    assert torch.all(whitened[mask == 0] == 0)


def test_gae_hand_computed_single_row() -> None:
    # gamma=0.9, lam=0.8 (gamma*lam = 0.72), V after the last token = 0:
    # delta2 = 1 + 0.9*0   - 0.7 = 0.3    A2 = 0.3
    # delta1 = 0 + 0.9*0.7 - 0.6 = 0.03   A1 = 0.03 + 0.72*0.3   = 0.246
    # delta0 = 0 + 0.9*0.6 - 0.5 = 0.04   A0 = 0.04 + 0.72*0.246 = 0.21712
    # returns = A + V = [0.71712, 0.846, 1.0]
    rewards = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.6, 0.7]], dtype=torch.float64)
    advantages, returns = gae(rewards, values, torch.ones_like(rewards), gamma=0.9, lam=0.8)
    torch.testing.assert_close(
        advantages, torch.tensor([[0.21712, 0.246, 0.3]], dtype=torch.float64)
    )
    torch.testing.assert_close(returns, torch.tensor([[0.71712, 0.846, 1.0]], dtype=torch.float64))


def test_gae_padded_row_ends_at_its_last_token() -> None:
    # row 1 has 2 valid tokens; its padding holds 9s that must not leak in:
    # delta1 = 1.0 + 0 - 0.4 = 0.6           A1 = 0.6
    # delta0 = 0.5 + 0.9*0.4 - 0.2 = 0.66    A0 = 0.66 + 0.72*0.6 = 1.092
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 1.0, 9.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.6, 0.7], [0.2, 0.4, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(
        advantages, torch.tensor([[0.21712, 0.246, 0.3], [1.092, 0.6, 0.0]], dtype=torch.float64)
    )
    torch.testing.assert_close(
        returns, torch.tensor([[0.71712, 0.846, 1.0], [1.292, 1.0, 0.0]], dtype=torch.float64)
    )


def _gae_reference(
    rewards: list[float], values: list[float], length: int, gamma: float, lam: float
) -> tuple[list[float], list[float]]:
    """Textbook GAE on one episode of ``length`` steps, written independently as a loop."""
    advantages = [0.0] * len(rewards)
    for t in range(length):
        total, discount = 0.0, 1.0
        for u in range(t, length):
            next_value = values[u + 1] if u + 1 < length else 0.0
            total += discount * (rewards[u] + gamma * next_value - values[u])
            discount *= gamma * lam
        advantages[t] = total
    returns = [a + (values[t] if t < length else 0.0) for t, a in enumerate(advantages)]
    return advantages, returns


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0)])
def test_gae_matches_slow_reference_on_ragged_batches(seed: int, gamma: float, lam: float) -> None:
    rewards, values, mask = _random_masked(seed)
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    for row in range(rewards.shape[0]):
        ref_adv, ref_ret = _gae_reference(
            rewards[row].tolist(), values[row].tolist(), int(mask[row].sum()), gamma, lam
        )
        torch.testing.assert_close(advantages[row], torch.tensor(ref_adv, dtype=torch.float64))
        torch.testing.assert_close(returns[row], torch.tensor(ref_ret, dtype=torch.float64))


def test_gae_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="gae expects"):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3), gamma=1.0, lam=1.0)


# two prompts, group of 3: [1, 2, 3] (mean 2, unbiased std 1) and [0, 0, 6]
# (mean 2, unbiased var (4+4+16)/2 = 12, std 3.4641016; the biased std would be 2.828)
GROUP_REWARDS = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 6.0], dtype=torch.float64)


def test_grpo_hand_computed() -> None:
    advantages = group_relative_advantages(GROUP_REWARDS, group_size=3)
    d1, d2 = 1 + 1e-4, 12**0.5 + 1e-4  # group std + eps
    expected = [-1 / d1, 0.0, 1 / d1, -2 / d2, -2 / d2, 4 / d2]
    torch.testing.assert_close(advantages, torch.tensor(expected, dtype=torch.float64))


def test_grpo_without_scaling_only_centres() -> None:
    advantages = group_relative_advantages(GROUP_REWARDS, group_size=3, scale="none")
    torch.testing.assert_close(
        advantages, torch.tensor([-1.0, 0.0, 1.0, -2.0, -2.0, 4.0], dtype=torch.float64)
    )


def test_grpo_equal_rewards_give_zero_advantage() -> None:
    advantages = group_relative_advantages(torch.full((4,), 0.7), group_size=4)
    assert torch.all(advantages == 0)


@pytest.mark.parametrize(
    ("length", "group_size"), [(6, 4), (6, 1), (3, 0)], ids=["not-multiple", "one", "zero"]
)
def test_group_estimators_reject_bad_groups(length: int, group_size: int) -> None:
    for estimator in (group_relative_advantages, leave_one_out_advantages):
        with pytest.raises(ValueError, match="group_size"):
            estimator(torch.zeros(length), group_size)


def test_grpo_rejects_unknown_scale() -> None:
    with pytest.raises(ValueError, match="scale"):
        group_relative_advantages(GROUP_REWARDS, 3, scale="batch_std")  # type: ignore[arg-type]


def test_rloo_hand_computed() -> None:
    # [1, 2, 3]: 1 - (2+3)/2 = -1.5, 2 - (1+3)/2 = 0, 3 - (1+2)/2 = 1.5
    # [0, 0, 6]: 0 - (0+6)/2 = -3,   -3,              6 - 0 = 6
    advantages = leave_one_out_advantages(GROUP_REWARDS, group_size=3)
    torch.testing.assert_close(
        advantages, torch.tensor([-1.5, 0.0, 1.5, -3.0, -3.0, 6.0], dtype=torch.float64)
    )


def test_rloo_sums_to_zero_per_group_and_scales_centred_rewards() -> None:
    gen = torch.Generator().manual_seed(7)
    rewards = torch.randn(5 * 4, generator=gen, dtype=torch.float64)
    advantages = leave_one_out_advantages(rewards, group_size=4).view(5, 4)
    torch.testing.assert_close(advantages.sum(dim=1), torch.zeros(5, dtype=torch.float64))
    # r_i - (S - r_i)/(k-1) = k/(k-1) * (r_i - mean)
    centred = group_relative_advantages(rewards, 4, scale="none").view(5, 4)
    torch.testing.assert_close(advantages, centred * 4 / 3)
