"""KL penalty of PPO-style RLHF: per-token estimators, the KL-coefficient controllers and
the KL-penalised per-token rewards (TRL 0.11 ``PPOTrainer.compute_rewards``)."""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import torch

KLEstimator = Literal["k1", "k2", "k3"]


def kl_per_token(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator
) -> torch.Tensor:
    """Schulman's estimators of KL(policy || ref) from tokens sampled from the policy.

    With ``log r = ref_logprobs - logprobs``: k1 = -log r (unbiased, can be negative),
    k2 = 0.5 (log r)^2 (biased, low variance), k3 = (r - 1) - log r (unbiased and >= 0).
    No clamping: the caller sees the exact estimate (k3 overflows only for log-ratios > ~88).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; expected 'k1', 'k2' or 'k3'")


@runtime_checkable
class KLController(Protocol):
    """The KL coefficient, updated once per PPO batch and saved in checkpoints."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None: ...

    def state_dict(self) -> dict[str, float]: ...

    def load_state_dict(self, state: dict[str, float]) -> None: ...


def _value_from(state: dict[str, float]) -> float:
    if "value" not in state:
        raise ValueError(f"KL controller state has no 'value': {sorted(state)}")
    return float(state["value"])


class FixedKLController:
    """A constant KL coefficient (TRL's ``FixedKLController``)."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: the coefficient is fixed."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = _value_from(state)


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. 2019 (TRL 0.11 ``AdaptiveKLController``).

    Moves the coefficient proportionally toward the KL ``target``, the error clipped to
    ±0.2 so one noisy batch cannot swing it far; ``horizon`` sets the speed in samples.
    The coefficient is state: a resume must restore it or the penalty jumps back to its
    initial value.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got {target} and {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(float(current_kl) / self.target - 1, -0.2), 0.2)
        mult = 1 + proportional_error * n_steps / self.horizon
        self.value *= mult

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = _value_from(state)


def kl_penalized_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    estimator: KLEstimator = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards ``-kl_coef * kl`` plus each row's score on its last valid token.

    As TRL 0.11 ``compute_rewards``: the sequence-level score (reward model) arrives at the
    end of the response, the KL penalty on every token. Shapes: ``scores`` (batch,), the
    others (batch, T). Returns ``(rewards, kl)``, both 0 where ``mask`` is 0 (TRL leaves
    them there and masks later). Raises ValueError for a row without any valid token.
    """
    if scores.dim() != 1 or scores.shape[0] != logprobs.shape[0]:
        raise ValueError(
            f"scores must have shape (batch,) = ({logprobs.shape[0]},), got {tuple(scores.shape)}"
        )
    valid = mask.bool()
    if not bool(valid.any(dim=1).all()):
        raise ValueError("kl_penalized_rewards: a row has no valid response token")
    kl = torch.where(valid, kl_per_token(logprobs, ref_logprobs, estimator), 0.0)
    rewards = -kl_coef * kl
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(valid)
    last = torch.where(valid, positions, -1).max(dim=1).values
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards, kl
