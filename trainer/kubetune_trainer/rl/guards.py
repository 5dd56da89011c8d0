"""Guards against reward hacking that act on the run, not only log.

Reward hacking shows up in three signals long before anyone reads samples: the policy
drifts far from the reference (KL), responses grow or shrink because the reward model has
a length bias, and the training reward keeps rising while an independent held-out judge
scores the policy lower. A runaway KL stops the run with the trainer's permanent
:class:`~kubetune_trainer.errors.NumericalDivergenceError` (a retry would diverge the same
way); the other two return a :class:`GuardWarning` once per episode, because they are
evidence for a human, not proof. Every guard is checkpointable: a streak or a baseline
survives a resume, otherwise preemptions would hide a slow drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from kubetune_trainer.errors import NumericalDivergenceError


@dataclass(frozen=True)
class GuardWarning:
    """A guard's finding: which guard, a reason in words, the step and the numbers."""

    guard: str
    reason: str
    step: int
    values: dict[str, float] = field(default_factory=dict)


def _require_keys(owner: str, state: dict[str, Any], keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"{owner} state is missing {missing}; got {sorted(state)}")


class KLCeilingGuard:
    """Stop the run when the mean KL to the reference stays above ``ceiling``.

    One step above the ceiling is noise (a hard batch); ``for_steps`` consecutive steps
    is drift, and PPO/GRPO rarely come back from it on their own. A non-finite KL counts
    as above the ceiling: NaN must never reset the streak.
    """

    name = "kl_ceiling"

    def __init__(self, ceiling: float, for_steps: int) -> None:
        if not math.isfinite(ceiling):
            raise ValueError(f"KL ceiling must be finite, got {ceiling}")
        if for_steps < 1:
            raise ValueError(f"for_steps must be >= 1, got {for_steps}")
        self.ceiling = float(ceiling)
        self.for_steps = int(for_steps)
        self.streak_start = -1
        self.streak_values: list[float] = []

    def observe(self, step: int, kl: float) -> None:
        """Count ``step``; raises NumericalDivergenceError on the ``for_steps``-th in a row."""
        kl = float(kl)
        if math.isfinite(kl) and kl <= self.ceiling:
            self.streak_start, self.streak_values = -1, []
            return
        if not self.streak_values:
            self.streak_start = int(step)
        self.streak_values.append(kl)
        if len(self.streak_values) >= self.for_steps:
            values = ", ".join(f"{v:.4g}" for v in self.streak_values)
            raise NumericalDivergenceError(
                f"KL to the reference {kl:.4g} > ceiling {self.ceiling:g} for "
                f"{len(self.streak_values)} consecutive steps (steps {self.streak_start}-"
                f"{step}; KL {values}): the policy is drifting away from the reference, "
                "likely exploiting the reward; lower the learning rate or raise the KL "
                "coefficient (or the ceiling if such a KL is expected)."
            )

    def state_dict(self) -> dict[str, Any]:
        return {"streak_start": self.streak_start, "streak_values": list(self.streak_values)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _require_keys("KLCeilingGuard", state, ("streak_start", "streak_values"))
        self.streak_start = int(state["streak_start"])
        self.streak_values = [float(v) for v in state["streak_values"]]


class LengthDriftGuard:
    """Warn when the mean response length leaves ``[baseline / r, baseline * r]``.

    The baseline is the mean over the first ``baseline_steps`` observed steps only (the
    policy before it had time to learn a length bias) and never moves afterwards: a
    rolling baseline would follow a slow drift and never fire. Growth is the classic
    sign of a reward model that pays for length; collapse, of one that pays for brevity
    or of truncation. One warning per episode: the count restarts only after the length
    returns inside the band (or flips to the other side).
    """

    name = "length_drift"

    def __init__(self, baseline_steps: int, max_ratio: float, for_steps: int) -> None:
        if baseline_steps < 1 or for_steps < 1:
            raise ValueError(
                f"baseline_steps and for_steps must be >= 1, got {baseline_steps}, {for_steps}"
            )
        if not max_ratio > 1:
            raise ValueError(f"max_ratio must be > 1, got {max_ratio}")
        self.baseline_steps = int(baseline_steps)
        self.max_ratio = float(max_ratio)
        self.for_steps = int(for_steps)
        self.baseline_sum = 0.0
        self.baseline_count = 0
        self.baseline_first_step = -1
        self.baseline_last_step = -1
        self.direction = ""  # "", "above" or "below"
        self.streak = 0
        self.streak_start = -1
        self.warned = False

    @property
    def baseline(self) -> float | None:
        """The baseline mean length, None while it is still being measured."""
        if self.baseline_count < self.baseline_steps:
            return None
        return self.baseline_sum / self.baseline_count

    def observe(self, step: int, mean_length: float) -> GuardWarning | None:
        """Record one step's mean response length (tokens); a warning opens an episode."""
        length = float(mean_length)
        if not math.isfinite(length) or length < 0:
            raise ValueError(f"mean response length must be finite and >= 0, got {length}")
        baseline = self.baseline
        if baseline is None:
            if self.baseline_count == 0:
                self.baseline_first_step = int(step)
            self.baseline_last_step = int(step)
            self.baseline_sum += length
            self.baseline_count += 1
            return None
        if length > baseline * self.max_ratio:
            direction = "above"
        elif length < baseline / self.max_ratio:
            direction = "below"
        else:
            self.direction, self.streak, self.streak_start, self.warned = "", 0, -1, False
            return None
        if direction != self.direction:
            self.direction, self.streak, self.streak_start, self.warned = direction, 0, step, False
        self.streak += 1
        if self.streak < self.for_steps or self.warned:
            return None
        self.warned = True
        ratio = length / baseline if baseline > 0 else math.inf
        if direction == "above":
            limit = f"above the limit {self.max_ratio:g}x"
            advice = (
                "the policy may be exploiting a length bias of the reward model; read "
                "samples, add a length penalty or raise the KL coefficient"
            )
        else:
            limit = f"below the limit 1/{self.max_ratio:g}x"
            advice = (
                "responses are collapsing (empty or truncated answers); read samples and "
                "check the reward for a bias toward short answers"
            )
        return GuardWarning(
            guard=self.name,
            reason=(
                f"mean response length {length:.1f} is {ratio:.2f}x the baseline "
                f"{baseline:.1f} (mean of steps {self.baseline_first_step}-"
                f"{self.baseline_last_step}), {limit} for {self.streak} consecutive steps "
                f"(steps {self.streak_start}-{step}): {advice}."
            ),
            step=int(step),
            values={"mean_length": length, "baseline": baseline, "ratio": ratio},
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "baseline_sum": self.baseline_sum,
            "baseline_count": self.baseline_count,
            "baseline_first_step": self.baseline_first_step,
            "baseline_last_step": self.baseline_last_step,
            "direction": self.direction,
            "streak": self.streak,
            "streak_start": self.streak_start,
            "warned": self.warned,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _require_keys("LengthDriftGuard", state, tuple(self.state_dict()))
        self.baseline_sum = float(state["baseline_sum"])
        self.baseline_count = int(state["baseline_count"])
        self.baseline_first_step = int(state["baseline_first_step"])
        self.baseline_last_step = int(state["baseline_last_step"])
        self.direction = str(state["direction"])
        self.streak = int(state["streak"])
        self.streak_start = int(state["streak_start"])
        self.warned = bool(state["warned"])


def fitted_change(xs: list[float], ys: list[float]) -> float:
    """Change of the least-squares line through ``(xs, ys)`` from ``xs[0]`` to ``xs[-1]``.

    Zero when all ``xs`` are equal (no trend can be measured).
    """
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    return sxy / sxx * (xs[-1] - xs[0])


class RewardDivergenceGuard:
    """Warn when the training reward rises while a held-out reward model's score falls.

    The signature of reward hacking (Gao et al. 2022, "Scaling laws for reward model
    overoptimization"): the proxy keeps paying while an independent judge disagrees.
    Each held-out evaluation is paired with the mean training reward of the steps since
    the previous one, so the per-step noise of the training reward is averaged away and
    both series share the same x (the evaluation step). The trend of each series over the
    last ``window`` evaluations is the change of its least-squares line: unlike first-vs-
    last it uses every point (lowest variance of any linear unbiased trend estimate under
    independent noise, Gauss-Markov), and unlike first-half-vs-second-half means it
    does not halve the span it measures. ``window >= 3`` so at least one point is
    averaged. One warning per episode, cleared when the divergence stops.
    """

    name = "reward_divergence"

    def __init__(self, window: int, min_rise: float, min_fall: float) -> None:
        if window < 3:
            raise ValueError(f"window must be >= 3 held-out evaluations, got {window}")
        if not (min_rise > 0 and min_fall > 0):
            raise ValueError(f"min_rise and min_fall must be > 0, got {min_rise}, {min_fall}")
        self.window = int(window)
        self.min_rise = float(min_rise)
        self.min_fall = float(min_fall)
        self.pending_sum = 0.0
        self.pending_count = 0
        self.eval_steps: list[float] = []
        self.train_rewards: list[float] = []
        self.heldout_scores: list[float] = []
        self.active = False

    def observe(
        self, step: int, reward: float, heldout_score: float | None = None
    ) -> GuardWarning | None:
        """Record a step's mean training reward and, on evaluation steps, the held-out score."""
        self.pending_sum += float(reward)
        self.pending_count += 1
        if heldout_score is None:
            return None
        self.eval_steps.append(float(step))
        self.train_rewards.append(self.pending_sum / self.pending_count)
        self.heldout_scores.append(float(heldout_score))
        self.pending_sum, self.pending_count = 0.0, 0
        del self.eval_steps[: -self.window]
        del self.train_rewards[: -self.window]
        del self.heldout_scores[: -self.window]
        if len(self.eval_steps) < self.window:
            return None
        rise = fitted_change(self.eval_steps, self.train_rewards)
        heldout_change = fitted_change(self.eval_steps, self.heldout_scores)
        # `not (x >= t)` so that a NaN trend never counts as divergence.
        if not (rise >= self.min_rise and -heldout_change >= self.min_fall):
            self.active = False
            return None
        if self.active:
            return None
        self.active = True
        first, last = int(self.eval_steps[0]), int(self.eval_steps[-1])
        return GuardWarning(
            guard=self.name,
            reason=(
                f"over the last {self.window} held-out evaluations (steps {first}-{last}) the "
                f"training reward rose by {rise:.4g} (>= {self.min_rise:g}) while the "
                f"held-out reward-model score fell by {-heldout_change:.4g} "
                f"(>= {self.min_fall:g}): the policy is likely exploiting the training "
                "reward model; read samples, raise the KL coefficient or stop at an "
                "earlier checkpoint."
            ),
            step=int(step),
            values={"train_reward_rise": rise, "heldout_change": heldout_change},
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "pending_sum": self.pending_sum,
            "pending_count": self.pending_count,
            "eval_steps": list(self.eval_steps),
            "train_rewards": list(self.train_rewards),
            "heldout_scores": list(self.heldout_scores),
            "active": self.active,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _require_keys("RewardDivergenceGuard", state, tuple(self.state_dict()))
        self.pending_sum = float(state["pending_sum"])
        self.pending_count = int(state["pending_count"])
        self.eval_steps = [float(v) for v in state["eval_steps"]]
        self.train_rewards = [float(v) for v in state["train_rewards"]]
        self.heldout_scores = [float(v) for v in state["heldout_scores"]]
        self.active = bool(state["active"])


class Guards:
    """The three guards behind one call per optimisation step; ``None`` disables one.

    The KL guard runs first: when it stops the run the warnings no longer matter.
    """

    def __init__(
        self,
        kl_ceiling: KLCeilingGuard | None = None,
        length_drift: LengthDriftGuard | None = None,
        reward_divergence: RewardDivergenceGuard | None = None,
    ) -> None:
        self.kl_ceiling = kl_ceiling
        self.length_drift = length_drift
        self.reward_divergence = reward_divergence

    def observe(
        self,
        step: int,
        *,
        kl: float,
        mean_length: float,
        reward: float,
        heldout_score: float | None = None,
    ) -> list[GuardWarning]:
        """Feed one step to every enabled guard; raises NumericalDivergenceError to stop."""
        if self.kl_ceiling is not None:
            self.kl_ceiling.observe(step, kl)
        warnings: list[GuardWarning] = []
        if self.length_drift is not None:
            found = self.length_drift.observe(step, mean_length)
            if found is not None:
                warnings.append(found)
        if self.reward_divergence is not None:
            found = self.reward_divergence.observe(step, reward, heldout_score)
            if found is not None:
                warnings.append(found)
        return warnings

    def _enabled(
        self,
    ) -> dict[str, KLCeilingGuard | LengthDriftGuard | RewardDivergenceGuard]:
        guards = {
            KLCeilingGuard.name: self.kl_ceiling,
            LengthDriftGuard.name: self.length_drift,
            RewardDivergenceGuard.name: self.reward_divergence,
        }
        return {name: guard for name, guard in guards.items() if guard is not None}

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """One entry per enabled guard, keyed by its name."""
        return {name: guard.state_dict() for name, guard in self._enabled().items()}

    def load_state_dict(self, state: dict[str, dict[str, Any]]) -> None:
        """Restore each enabled guard that has saved state.

        A guard enabled since the checkpoint starts fresh and one disabled since is
        ignored: changing the guard settings on a resume is legitimate.
        """
        for name, guard in self._enabled().items():
            if name in state:
                guard.load_state_dict(state[name])
