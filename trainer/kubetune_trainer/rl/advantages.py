"""Advantage estimators of PPO (GAE), GRPO (group-normalised) and RLOO (leave-one-out).

The masked statistics follow TRL 0.11 ``trl/core.py`` (``masked_mean``, ``masked_var``,
``masked_whiten``) and GAE follows TRL 0.11 ``PPOTrainer.compute_advantages``, so numbers
can be compared with the reference implementation the field used for years.
"""

from __future__ import annotations

from typing import Literal

import torch

WHITEN_EPS = 1e-8  # TRL's masked_whiten: rsqrt(var + 1e-8)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is nonzero, over all entries or along ``dim``."""
    if dim is not None:
        return (values * mask).sum(dim=dim) / mask.sum(dim=dim)
    return (values * mask).sum() / mask.sum()


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the masked entries; Bessel's correction uses the masked count (as TRL).

    Raises ValueError when the count is 0 (no entries) or 1 with ``unbiased`` (n/(n-1)
    divides by zero): TRL returns inf/nan there, which silently poisons the whitening.
    """
    count = float(mask.sum())
    if count == 0:
        raise ValueError("masked_var: the mask selects no entries")
    if unbiased and count == 1:
        raise ValueError("masked_var: unbiased variance needs at least 2 masked entries")
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        variance = variance * (count / (count - 1))
    return variance


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True
) -> torch.Tensor:
    """Scale the masked entries to unit variance (and mean 0 unless ``shift_mean`` is False).

    ``shift_mean=False`` keeps the original mean, as TRL does when whitening rewards.
    Unlike TRL, masked-out entries are set to 0 rather than transformed, so padding can never
    leak a large value into a loss that forgets to mask it.
    """
    mean = masked_mean(values, mask)
    var = masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over (batch, T) tokens.

    Same reverse loop as TRL 0.11 ``compute_advantages``: rewards and values are multiplied
    by the response mask first, so the value after a row's last valid token is 0 (the episode
    ends there) and trailing padding contributes nothing; this is what makes one loop over T
    respect rows of different lengths. The mask is expected to be 1 on a contiguous response
    span with 0 padding after it. Returns ``(advantages, returns)`` with
    ``returns = advantages + values`` (the value target), both 0 where the mask is 0.
    Advantages are not whitened; call ``masked_whiten`` on them, as TRL does after
    computing the returns.
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape or rewards.dim() != 2:
        raise ValueError(
            f"gae expects rewards, values and mask of one (batch, T) shape; got "
            f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}"
        )
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    length = rewards.shape[1]
    lastgaelam = torch.zeros_like(rewards[:, 0])
    advantages_reversed = []
    for t in reversed(range(length)):
        nextvalues = values[:, t + 1] if t < length - 1 else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], dim=1) * mask
    returns = advantages + values
    return advantages, returns


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards must be 1-D with a length that is a multiple of group_size "
            f"{group_size}; got shape {tuple(rewards.shape)}"
        )
    return rewards.view(-1, group_size)


def group_relative_advantages(
    rewards: torch.Tensor,
    group_size: int,
    scale: Literal["group_std", "none"] = "group_std",
    eps: float = 1e-4,
) -> torch.Tensor:
    """GRPO advantages (Shao et al. 2024, DeepSeekMath): reward relative to its prompt's group.

    ``rewards`` holds ``group_size`` consecutive completions per prompt. The advantage is
    ``(r - group mean) / (group std + eps)``; the std is the unbiased one (``torch.std``'s
    default), as TRL's ``GRPOTrainer``, so results match it. ``scale="none"`` only centres
    (Dr. GRPO, Liu et al. 2025), which removes the bias toward low-variance prompts.
    """
    grouped = _grouped(rewards, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group_std":
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    elif scale != "none":
        raise ValueError(f"unknown GRPO scale {scale!r}; expected 'group_std' or 'none'")
    return centred.reshape(-1)


def leave_one_out_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO advantages (Ahmadian et al. 2024): reward minus the mean of the other k-1 rewards.

    The baseline excludes the sample itself, so it is unbiased; advantages sum to 0 per group.
    Layout as ``group_relative_advantages`` (k consecutive completions per prompt); note TRL's
    ``RLOOTrainer`` lays them out as (k, n_prompts) instead.
    """
    grouped = _grouped(rewards, group_size)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).reshape(-1)
