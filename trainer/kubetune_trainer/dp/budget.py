"""The privacy budget: sampling rate, noise multiplier, delta, and the epsilon spent.

The loop samples each step's rows by Poisson sampling with rate q = B / N (B the global
batch size, N the training rows), so the mechanism is the Poisson-subsampled Gaussian
mechanism that Opacus' accountants analyse; ``T`` steps of it at noise multiplier sigma
spend ``epsilon(T)`` at delta. Nothing here depends on the model: the budget is a pure
function of (q, sigma, T, delta), so a resumed run recomputes it from the step count.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any

from kubetune.api.differential_privacy import DEFAULT_DELTA, DifferentialPrivacySpec
from kubetune_trainer.errors import InvalidConfigError


class PrivacyBudgetExhaustedError(InvalidConfigError):
    """The next step would spend more than targetEpsilon (permanent: a retry would too)."""


def _accountant(kind: str) -> Any:
    from opacus.accountants import create_accountant

    return create_accountant(mechanism=kind)


@functools.lru_cache(maxsize=1024)  # the loop asks for the same step's epsilon 2-3 times
def epsilon_spent(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """Epsilon at ``delta`` after ``steps`` Poisson-subsampled Gaussian steps (Opacus)."""
    if steps <= 0:
        return 0.0
    acc = _accountant(accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():  # "optimal order is the largest alpha": still an upper bound
        warnings.simplefilter("ignore", UserWarning)
        return float(acc.get_epsilon(delta=delta))


def noise_for_budget(
    target_epsilon: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """The smallest noise multiplier (to 0.01 in epsilon) that keeps ``steps`` steps within
    ``target_epsilon`` (Opacus ``get_noise_multiplier``)."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=max(steps, 1),
                accountant=accountant,
                epsilon_tolerance=0.01,
            )
        )


@dataclass(frozen=True)
class PrivacyPlan:
    """The DP-SGD settings of one run, resolved against its data and step count."""

    target_epsilon: float
    delta: float
    max_grad_norm: float
    noise_multiplier: float
    #: whether the noise multiplier was computed from targetEpsilon (not set in the spec)
    noise_computed: bool
    sample_rate: float
    expected_batch_size: float
    rows: int
    planned_steps: int
    accountant: str

    def epsilon(self, steps: int) -> float:
        return epsilon_spent(
            self.noise_multiplier, self.sample_rate, steps, self.delta, self.accountant
        )

    def affordable_steps(self) -> int:
        """The most steps whose epsilon stays within the target (binary search)."""
        low, high = 0, max(self.planned_steps, 1)
        while self.epsilon(high) <= self.target_epsilon and high < 10**7:
            low, high = high, high * 2
        while high - low > 1:
            middle = (low + high) // 2
            if self.epsilon(middle) <= self.target_epsilon:
                low = middle
            else:
                high = middle
        return low

    def record(self, steps: int) -> dict[str, Any]:
        """The lineage record (and model-card facts) after ``steps`` steps."""
        return {
            "mechanism": "DP-SGD (Poisson sampling, per-row clipping, Gaussian noise)",
            "accountant": self.accountant,
            "targetEpsilon": self.target_epsilon,
            "epsilonSpent": self.epsilon(steps),
            "delta": self.delta,
            "noiseMultiplier": self.noise_multiplier,
            "noiseMultiplierComputed": self.noise_computed,
            "maxGradNorm": self.max_grad_norm,
            "sampleRate": self.sample_rate,
            "expectedBatchSize": self.expected_batch_size,
            "trainingRows": self.rows,
            "steps": steps,
            "plannedSteps": self.planned_steps,
        }

    def describe(self) -> str:
        planned = self.epsilon(self.planned_steps)
        return (
            f"differential privacy: {self.planned_steps} steps at sampling rate "
            f"{self.sample_rate:.4g}, noise multiplier {self.noise_multiplier:.4g}"
            f"{' (computed)' if self.noise_computed else ''}, clip norm {self.max_grad_norm:g} "
            f"spend epsilon {planned:.3f} of {self.target_epsilon:g} at delta {self.delta:.3g} "
            f"({self.accountant})"
        )


def plan_privacy(
    spec: DifferentialPrivacySpec, rows: int, batch_size: int, steps: int, *, strict: bool
) -> PrivacyPlan:
    """Resolve the spec against N rows, batch size B and the planned steps.

    ``strict`` (validation): refuse a plan whose planned steps would spend more than the
    target. Without it (training) the plan stands and the loop stops at the budget.
    """
    if rows < 2:
        raise InvalidConfigError("differentialPrivacy needs at least 2 training rows")
    delta = spec.delta if spec.delta is not None else min(DEFAULT_DELTA, 1.0 / (10 * rows))
    if delta >= 1.0 / rows:
        raise InvalidConfigError(
            f"differentialPrivacy.delta {delta:g} must be below 1/N = {1.0 / rows:.3g} for "
            f"N = {rows} training rows (a larger delta allows leaking a row outright)"
        )
    sample_rate = min(1.0, batch_size / rows)
    computed = spec.noise_multiplier is None
    try:
        sigma = (
            noise_for_budget(spec.target_epsilon, sample_rate, steps, delta, spec.accountant)
            if spec.noise_multiplier is None
            else spec.noise_multiplier
        )
    except ValueError as exc:  # opacus: the target is out of reach
        raise InvalidConfigError(
            f"differentialPrivacy: no noise multiplier reaches epsilon {spec.target_epsilon:g} "
            f"in {steps} steps at sampling rate {sample_rate:.4g}: {exc}"
        ) from exc
    plan = PrivacyPlan(
        target_epsilon=spec.target_epsilon,
        delta=delta,
        max_grad_norm=spec.max_grad_norm,
        noise_multiplier=sigma,
        noise_computed=computed,
        sample_rate=sample_rate,
        expected_batch_size=sample_rate * rows,
        rows=rows,
        planned_steps=steps,
        accountant=spec.accountant,
    )
    if strict:
        planned = plan.epsilon(steps)
        if planned > spec.target_epsilon * (1 + 1e-9):
            affordable = plan.affordable_steps()
            raise InvalidConfigError(
                f"differentialPrivacy: the {steps} planned steps at noise multiplier "
                f"{sigma:g} (sampling rate {sample_rate:.4g}, delta {delta:.3g}) would spend "
                f"epsilon {planned:.3f}, over targetEpsilon {spec.target_epsilon:g}; only "
                f"{affordable} steps fit. Raise noiseMultiplier (or leave it unset to compute "
                "it), lower the steps, or raise targetEpsilon"
            )
    if not math.isfinite(sigma) or sigma <= 0:
        raise InvalidConfigError(f"differentialPrivacy: invalid noise multiplier {sigma}")
    return plan
