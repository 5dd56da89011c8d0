"""PPO losses against hand-computed numbers and naive reference implementations."""

from __future__ import annotations

import math

import pytest
import torch

from kubetune_trainer.rl.losses import (
    PolicyLossOutput,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    explained_variance,
    logprobs_from_logits,
    ratio_exploded,
)

EPS = 0.2
# old log-probs 0 and new log-probs log(r): ratios r = [1.5, 0.5, 1.1]
RATIOS = [1.5, 0.5, 1.1]


def _policy(
    advantage: float, mask: list[float] | None = None
) -> tuple[PolicyLossOutput, torch.Tensor]:
    logprobs = torch.tensor([[math.log(r) for r in RATIOS]], requires_grad=True)
    old = torch.zeros(1, 3)
    adv = torch.full((1, 3), advantage)
    m = torch.ones(1, 3) if mask is None else torch.tensor([mask])
    return clipped_policy_loss(logprobs, old, adv, m, EPS), logprobs


def test_policy_loss_positive_advantage_by_hand() -> None:
    # A = +1: pg1 = -r, pg2 = -clip(r, 0.8, 1.2), loss term = max(pg1, pg2)
    #   r=1.5: max(-1.5, -1.2) = -1.2  clipped (no gain from pushing the ratio further up)
    #   r=0.5: max(-0.5, -0.8) = -0.5  not clipped (the ratio may still rise)
    #   r=1.1: max(-1.1, -1.1) = -1.1  inside the range, not clipped
    # loss = (-1.2 - 0.5 - 1.1) / 3 = -0.9333..., clipfrac = 1/3
    out, logprobs = _policy(1.0)
    assert out.loss.item() == pytest.approx(-2.8 / 3, abs=1e-6)
    assert out.clipfrac.item() == pytest.approx(1 / 3)
    # approx_kl = 0.5 * mean(log(r)^2)
    kl = 0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2 + math.log(1.1) ** 2) / 3
    assert out.approx_kl.item() == pytest.approx(kl, rel=1e-5)
    assert out.ratio_mean.item() == pytest.approx(3.1 / 3, rel=1e-6)
    assert out.ratio_max.item() == pytest.approx(1.5, rel=1e-6)
    # d loss / d logprob = -A * r / 3 where unclipped, 0 on the clipped token
    out.loss.backward()
    assert logprobs.grad is not None
    expected = torch.tensor([[0.0, -0.5 / 3, -1.1 / 3]])
    assert torch.allclose(logprobs.grad, expected, atol=1e-6)


def test_policy_loss_negative_advantage_by_hand() -> None:
    # A = -1: pg1 = r, pg2 = clip(r, 0.8, 1.2)
    #   r=1.5: max(1.5, 1.2) = 1.5  not clipped (the ratio went the wrong way: full penalty)
    #   r=0.5: max(0.5, 0.8) = 0.8  clipped (no gain from pushing the ratio further down)
    #   r=1.1: max(1.1, 1.1) = 1.1  not clipped
    # loss = (1.5 + 0.8 + 1.1) / 3 = 1.1333..., clipfrac = 1/3
    out, logprobs = _policy(-1.0)
    assert out.loss.item() == pytest.approx(3.4 / 3, abs=1e-6)
    assert out.clipfrac.item() == pytest.approx(1 / 3)
    out.loss.backward()
    assert logprobs.grad is not None
    assert torch.allclose(logprobs.grad, torch.tensor([[1.5 / 3, 0.0, 1.1 / 3]]), atol=1e-6)


def test_policy_loss_ignores_masked_tokens() -> None:
    def run(pad_logprob: float, pad_adv: float) -> PolicyLossOutput:
        logprobs = torch.tensor([[math.log(r) for r in RATIOS] + [pad_logprob]])
        adv = torch.tensor([[1.0, 1.0, 1.0, pad_adv]])
        mask = torch.tensor([[True, True, True, False]])
        return clipped_policy_loss(logprobs, torch.zeros(1, 4), adv, mask, EPS)

    a, b = run(0.0, 0.0), run(5.0, 100.0)
    for name in ("loss", "clipfrac", "approx_kl", "ratio_mean", "ratio_max"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    # the padded token really is absent: the numbers of the unpadded 1x3 case
    assert b.loss.item() == pytest.approx(-2.8 / 3, abs=1e-6)
    assert b.ratio_max.item() == pytest.approx(1.5, rel=1e-6)


def test_policy_loss_empty_mask_is_zero_not_nan() -> None:
    out, _ = _policy(1.0, mask=[0.0, 0.0, 0.0])
    assert out.loss.item() == 0.0


def test_value_loss_by_hand() -> None:
    # eps = 0.2, old values 0 -> new values clipped to [-0.2, 0.2]
    #   v=0.5, R=1:  (0.5-1)^2 = 0.25, (0.2-1)^2 = 0.64  -> 0.64 clipped
    #   v=-0.1, R=0: 0.01, 0.01 (inside the range)       -> 0.01
    #   v=0.3, R=-1: (1.3)^2 = 1.69, (0.2+1)^2 = 1.44    -> 1.69 (moving away was worse)
    # loss = 0.5 * (0.64 + 0.01 + 1.69) / 3 = 0.39, vf_clipfrac = 1/3
    values = torch.tensor([[0.5, -0.1, 0.3, 9.0]], requires_grad=True)
    out = clipped_value_loss(
        values,
        torch.zeros(1, 4),
        torch.tensor([[1.0, 0.0, -1.0, -9.0]]),
        torch.tensor([[1, 1, 1, 0]]),
        EPS,
    )
    assert out.loss.item() == pytest.approx(0.39, abs=1e-6)
    assert out.vf_clipfrac.item() == pytest.approx(1 / 3)
    out.loss.backward()
    assert values.grad is not None
    # clipped token: no gradient; others 0.5 * 2 * (v - R) / 3
    expected = torch.tensor([[0.0, -0.1 / 3, 1.3 / 3, 0.0]])
    assert torch.allclose(values.grad, expected, atol=1e-6)


def test_explained_variance() -> None:
    returns = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert explained_variance(returns.clone(), returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 4), 2.0), returns, mask) == pytest.approx(0.0)
    # residuals [0, 0, -1]: Var = 2/9; Var(R) = 2/3 -> 1 - 1/3
    values = torch.tensor([[1.0, 2.0, 4.0, -7.0]])
    assert explained_variance(values, returns, mask) == pytest.approx(2 / 3)
    assert math.isnan(explained_variance(values, torch.full((1, 4), 2.0), mask))


def test_entropy_uniform_and_peaked() -> None:
    assert torch.allclose(
        entropy_from_logits(torch.zeros(2, 3, 7)), torch.full((2, 3), math.log(7))
    )
    # a one-hot distribution has entropy 0, not nan (p = 0 where exp underflows)
    peaked = torch.tensor([[0.0, -1e4, -1e4]])
    assert entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-6)


def test_entropy_matches_naive() -> None:
    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0)) * 3
    p = torch.softmax(logits.double(), -1)
    naive = -(p * p.log()).sum(-1)
    assert torch.allclose(entropy_from_logits(logits).double(), naive, atol=1e-5)


def test_logprobs_match_naive_softmax_then_log() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g) * 4
    labels = torch.randint(0, 11, (2, 5), generator=g)
    naive = torch.softmax(logits.double(), -1).log().gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    got = logprobs_from_logits(logits, labels)
    assert got.shape == (2, 5) and got.dtype == torch.float32
    assert torch.allclose(got.double(), naive, atol=1e-5)
    # bf16 logits: the result is float32 and equals the float32 computation of those values
    low = logits.bfloat16()
    assert logprobs_from_logits(low, labels).dtype == torch.float32
    assert torch.allclose(
        logprobs_from_logits(low, labels), logprobs_from_logits(low.float(), labels)
    )
    # the ignore index (-100) reads token 0 rather than failing
    labels[0, 0] = -100
    expected = torch.log_softmax(logits[0, 0], -1)[0].item()
    assert logprobs_from_logits(logits, labels)[0, 0].item() == pytest.approx(expected, abs=1e-5)


def test_logprobs_gradient_flows() -> None:
    logits = torch.zeros(1, 1, 4, requires_grad=True)
    logprobs_from_logits(logits, torch.tensor([[2]])).sum().backward()
    assert logits.grad is not None
    # d log softmax_2 / d logits = onehot(2) - softmax = [-.25, -.25, .75, -.25]
    assert torch.allclose(logits.grad, torch.tensor([[[-0.25, -0.25, 0.75, -0.25]]]))


def test_ratio_exploded() -> None:
    assert ratio_exploded(10.5, 10.0)
    assert not ratio_exploded(10.0, 10.0)
    assert ratio_exploded(torch.tensor(3.0), 2.0)
    assert not ratio_exploded(1.03)
