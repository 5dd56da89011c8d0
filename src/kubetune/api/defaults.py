"""Defaults and recommended ranges, from fine-tuning practice (per method: methods.py).

Hard bounds live on the models (and so in the CRD); these are softer: a value outside
a recommended range is accepted with a warning (a ConfigWarning condition and an Event
from the operator, a printed warning from the CLI).
"""

from __future__ import annotations

from typing import Final

RECOMMENDED_EPOCHS = (1.0, 5.0)
RECOMMENDED_WEIGHT_DECAY = (0.0, 0.1)
DEFAULT_EVAL_SPLIT = 0.05
DEFAULT_ZERO_STAGE: Final = 2
