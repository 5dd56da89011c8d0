"""PPO's clipped policy and value losses and the per-token quantities they need.

Formulas follow TRL 0.11 ``PPOTrainer.loss`` (``pg_losses``/``pg_losses2``, ``vf_losses1``/
``vf_losses2``, ``approxkl``, ``ratio_threshold``) so metrics read the same as there. All
means are over the tokens of ``mask`` (response tokens, not prompt or padding); an empty
mask gives 0 rather than TRL's NaN so a mini-batch without response tokens cannot poison the
optimizer state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of each label under ``logits`` ([..., T, V], [..., T] -> [..., T]).

    Computed as ``logit[label] - logsumexp(logits)`` in float32, one row of the batch at a
    time: a full ``log_softmax`` would materialise a float32 copy of the whole [B, T, V]
    tensor (gigabytes at 150k vocabularies), and bf16 logsumexp loses the precision the
    ratio ``exp(new - old)`` depends on. Negative labels (the ignore index) read token 0;
    the caller's mask drops those positions.
    """
    labels = labels.clamp(min=0)
    flat_logits = logits.reshape(-1, logits.shape[-2], logits.shape[-1])
    flat_labels = labels.reshape(-1, labels.shape[-1])
    rows = []
    for row_logits, row_labels in zip(flat_logits, flat_labels, strict=True):
        row = row_logits.float()
        picked = row.gather(-1, row_labels.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row, dim=-1))
    return torch.stack(rows).reshape(labels.shape)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each token's distribution ([..., V] -> [...]), in float32.

    ``logsumexp(l) - sum(softmax(l) * l)`` equals ``-sum(p log p)`` without taking the log
    of probabilities that underflow to 0 (which gives ``0 * -inf = nan``).
    """
    flat = logits.reshape(-1, logits.shape[-1])
    out = []
    # Row chunks bound the float32 copies like logprobs_from_logits does.
    for chunk in flat.split(1024):
        chunk = chunk.float()
        probs = torch.softmax(chunk, dim=-1)
        out.append(torch.logsumexp(chunk, dim=-1) - (probs * chunk).sum(dim=-1))
    return torch.cat(out).reshape(logits.shape[:-1])


@dataclass
class PolicyLossOutput:
    """The clipped surrogate loss (with grad) and its detached diagnostics."""

    loss: torch.Tensor
    clipfrac: torch.Tensor  # share of tokens where the clipped term won
    approx_kl: torch.Tensor  # 0.5 * mean((logp - old_logp)^2), TRL's approxkl
    ratio_mean: torch.Tensor
    ratio_max: torch.Tensor


@dataclass
class ValueLossOutput:
    """The clipped value loss (with grad) and the share of tokens where clipping won."""

    loss: torch.Tensor
    vf_clipfrac: torch.Tensor


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> PolicyLossOutput:
    """PPO-clip: mean over ``mask`` of ``max(-A * r, -A * clip(r, 1 - eps, 1 + eps))``.

    The max of the two negated surrogates is the pessimistic bound: once the ratio has
    moved past ``1 +- eps`` in the direction the advantage favours, the gradient is zero.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = _masked_mean(torch.max(pg_losses, pg_losses2), mask)
    with torch.no_grad():
        m = mask.to(ratio.dtype)
        return PolicyLossOutput(
            loss=loss,
            clipfrac=_masked_mean(torch.gt(pg_losses2, pg_losses).to(ratio.dtype), mask),
            approx_kl=0.5 * _masked_mean(log_ratio.detach() ** 2, mask),
            ratio_mean=_masked_mean(ratio.detach(), mask),
            # ratios are positive, so zeroed masked-out entries never win the max
            ratio_max=(ratio.detach() * m).max(),
        )


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
) -> ValueLossOutput:
    """``0.5 * mean(max((v - R)^2, (clip(v, old - eps, old + eps) - R)^2))`` over ``mask``.

    Clipping the new value prediction around the rollout's keeps the critic from jumping
    far on one batch, as PPO does for the policy (TRL's ``cliprange_value``).
    """
    clipped = torch.max(
        torch.min(values, old_values + clip_range_value), old_values - clip_range_value
    )
    vf_losses1 = (values - returns) ** 2
    vf_losses2 = (clipped - returns) ** 2
    loss = 0.5 * _masked_mean(torch.max(vf_losses1, vf_losses2), mask)
    with torch.no_grad():
        clipfrac = _masked_mean(torch.gt(vf_losses2, vf_losses1).to(values.dtype), mask)
    return ValueLossOutput(loss=loss, vf_clipfrac=clipfrac)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var(R - V) / Var(R)`` over ``mask`` (the ``critic/vf_explained_var`` metric).

    1 means the critic predicts the returns, 0 that it does no better than their mean,
    negative that it does worse. Returns NaN when the returns are constant (Var(R) = 0),
    as TRL and OpenRLHF do: the ratio is undefined there and a fake number would hide it.
    Biased variances: the Bessel factors of TRL's unbiased ones cancel in the ratio.
    """
    v = values.detach().double()
    r = returns.detach().double()

    def var(x: torch.Tensor) -> torch.Tensor:
        return _masked_mean((x - _masked_mean(x, mask)) ** 2, mask)

    var_returns = float(var(r))
    if var_returns == 0.0:
        return math.nan
    return 1.0 - float(var(r - v)) / var_returns


def ratio_exploded(ratio_mean: float | torch.Tensor, threshold: float = 10.0) -> bool:
    """Whether a mini-batch's mean ratio exceeds ``threshold`` (TRL's ``ratio_threshold``).

    A mean ratio that large means the policy has drifted far from the one that sampled the
    rollouts (or the log-probs disagree, e.g. a dtype or padding mismatch); the clipped
    objective no longer bounds the update there, so TRL 0.11 zeroes that mini-batch's loss
    instead of taking a destabilising step.
    """
    return float(ratio_mean) > threshold
