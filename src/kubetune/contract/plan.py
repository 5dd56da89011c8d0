"""The resource plan the validation pod hands the operator in its termination message.

Like the evaluation summary (``contract/evaluation.py``) it rides on a line of its own
after the human first line, prefixed with :data:`MARKER`; the operator copies it into
``status.plan`` and warns when the job will not fit its GPUs::

    validation passed: model pvc://models/llama (llama, 6,738,415,616 parameters); ...
    kubetune-plan {"peakMemoryBytes":...,"fit":"DoesNotFit","suggestions":[...]}
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from kubetune.contract.display import duration

MARKER = "kubetune-plan "
#: the plan's share of the 4000-byte termination message; the human line gets the rest
MAX_PLAN_BYTES = 1800

FitVerdict = Literal["Fits", "Tight", "DoesNotFit", "Unknown"]


class PlanSummary(BaseModel):
    """Peak memory per GPU and time per epoch, as estimated before any GPU is requested."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    peak_memory_bytes: int = Field(ge=0)
    memory_bytes: dict[str, int] = Field(default_factory=dict)
    gpu: str | None = None
    gpu_memory_bytes: int | None = Field(default=None, ge=0)
    fit: FitVerdict = "Unknown"
    setup: str = ""
    tokens_per_epoch: int | None = Field(default=None, ge=0)
    tokens_per_second: float | None = Field(default=None, ge=0)
    throughput: str | None = None
    epoch_seconds: float | None = Field(default=None, ge=0)
    suggestions: list[str] = Field(default_factory=list)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def encode_plan(plan: PlanSummary, budget: int = MAX_PLAN_BYTES) -> str:
    """The marker line, at most ``budget`` bytes: suggestions are cut, then dropped."""
    p = plan.model_copy(deep=True)
    p.setup = _clip(p.setup, 300)
    p.throughput = _clip(p.throughput, 200) if p.throughput else p.throughput
    p.suggestions = [_clip(s, 240) for s in p.suggestions[:5]]

    def line() -> str:
        body = p.model_dump(mode="json", by_alias=True, exclude_none=True)
        return MARKER + json.dumps(body, separators=(",", ":"))

    text = line()
    while len(text.encode()) > budget and p.suggestions:
        p.suggestions.pop()
        text = line()
    if len(text.encode()) > budget:
        p.setup, p.throughput = "", None
        text = line()
    return text


def parse_plan(text: str | None) -> PlanSummary | None:
    """The plan in a termination message; None when absent or unreadable."""
    for line in (text or "").splitlines():
        if line.startswith(MARKER):
            try:
                return PlanSummary.model_validate_json(line[len(MARKER) :])
            except ValidationError:
                return None
    return None


def without_plan(text: str) -> str:
    """The message with its plan line removed (for conditions that show the human part)."""
    return "\n".join(line for line in text.splitlines() if not line.startswith(MARKER))


def warning_message(plan: PlanSummary) -> str:
    """The Warning the operator posts when the plan does not fit (an estimate, not a verdict)."""
    gib = plan.peak_memory_bytes / 2**30
    gpu = f"{plan.gpu} ({(plan.gpu_memory_bytes or 0) / 2**30:.0f} GiB)" if plan.gpu else "the GPU"
    text = f"estimated peak memory {gib:.1f} GiB per GPU exceeds {gpu}"
    if plan.suggestions:
        text += "; to fit: " + "; ".join(plan.suggestions)
    if plan.epoch_seconds:
        text += f"; time per epoch ~{duration(plan.epoch_seconds)}"
    return text


def headline(plan: PlanSummary) -> str:
    """One clause for people: the estimate and how it compares with the GPU."""
    text = f"estimated peak memory {plan.peak_memory_bytes / 2**30:.1f} GiB per GPU"
    if plan.gpu:
        verdict = {"Fits": "fits", "Tight": "tight on", "DoesNotFit": "exceeds"}.get(plan.fit, "vs")
        text += f" ({verdict} {plan.gpu}, {(plan.gpu_memory_bytes or 0) / 2**30:.0f} GiB)"
    if plan.epoch_seconds:
        rate = f"{plan.tokens_per_second:,.0f} tokens/s" if plan.tokens_per_second else "?"
        text += f", ~{duration(plan.epoch_seconds)} per epoch at {rate} (assumed)"
    return text
