"""Method-dependent defaults and recommended ranges, from fine-tuning practice.

Hard bounds live on the models (and so in the CRD); these are softer: a value outside
a recommended range is accepted with a warning (a ConfigWarning condition and an Event
from the operator, a printed warning from the CLI).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class MethodDefaults:
    """Defaults and recommended ranges of one method."""

    learning_rate: float
    learning_rate_range: tuple[float, float]
    epochs: float
    weight_decay: float


_PEFT_LORA = MethodDefaults(2e-4, (5e-5, 5e-4), 3.0, 0.0)

METHOD_DEFAULTS: dict[str, MethodDefaults] = {
    "full": MethodDefaults(2e-5, (1e-5, 5e-5), 3.0, 0.01),
    "lora": _PEFT_LORA,
    "qlora": _PEFT_LORA,
    "adapter": MethodDefaults(1e-4, (5e-5, 1e-3), 3.0, 0.0),
    "prefix": MethodDefaults(1e-2, (1e-3, 5e-2), 3.0, 0.0),
    "prompt": MethodDefaults(3e-2, (1e-3, 3e-1), 3.0, 0.0),
    "reward": MethodDefaults(1e-5, (5e-6, 5e-5), 1.0, 0.0),
    "dpo": MethodDefaults(5e-7, (1e-7, 5e-6), 1.0, 0.0),
    "ppo": MethodDefaults(1e-6, (1e-7, 1e-5), 1.0, 0.0),
}

RECOMMENDED_EPOCHS = (1.0, 5.0)
RECOMMENDED_WEIGHT_DECAY = (0.0, 0.1)
DEFAULT_EVAL_SPLIT = 0.05
DEFAULT_ZERO_STAGE: Final = 2
