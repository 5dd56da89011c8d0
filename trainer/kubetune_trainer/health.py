"""Numerical health: stop a diverged run instead of burning GPU hours on NaNs.

Checked every optimizer step on values that are identical on all ranks (the
all-reduced loss and the global gradient norm), so every rank reaches the same verdict
and the gang stops together. The update is not applied when the verdict is "stop", so
the last checkpoint stays the last good state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from kubetune.api.training import HealthSpec
from kubetune_trainer.errors import NumericalDivergenceError

Verdict = Literal["ok", "skip"]


@dataclass
class HealthMonitor:
    settings: HealthSpec
    nonfinite_streak: int = 0
    skipped_steps: int = 0

    def check(
        self, step: int, loss: float, grad_norm: float | None, *, can_skip: bool = True
    ) -> Verdict:
        """``ok`` to apply the update, ``skip`` to drop it; raises when the run must stop."""
        finite = math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm))
        if not finite:
            self.nonfinite_streak += 1
            what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {grad_norm}"
            tolerance = self.settings.nan_tolerance_steps if can_skip else 0
            if self.nonfinite_streak > tolerance:
                raise NumericalDivergenceError(
                    f"non-finite {what} at step {step} "
                    f"({self.nonfinite_streak} consecutive, tolerance {tolerance}); the run "
                    "diverged: lower the learning rate, use bf16 instead of fp16, or check "
                    "the data. The last checkpoint was taken before the divergence."
                )
            self.skipped_steps += 1
            return "skip"
        self.nonfinite_streak = 0
        threshold = self.settings.grad_norm_abort_threshold
        if grad_norm is not None and grad_norm > threshold:
            raise NumericalDivergenceError(
                f"gradient norm {grad_norm:.4g} at step {step} exceeds "
                f"health.gradNormAbortThreshold {threshold:g}; the run is diverging: lower "
                "the learning rate or raise the threshold if such norms are expected."
            )
        return "ok"
