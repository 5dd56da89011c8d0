"""The evaluation summary rank 0 hands the operator in its termination message.

Training pods have no API rights, so the only channel from a finished trainer to the
operator is the container's termination message, which Kubernetes caps at 4096 bytes.
The message keeps a human first line and carries the summary on a line of its own::

    training finished: 40 steps, outputs in /out; evaluation Failed (1 of 2 gates failed)
    kubetune-evaluation {"v":1,"verdict":"Failed","baseline":"pvc://m/base",...}

The JSON uses short keys (``n`` name, ``b`` baseline, ``t`` tuned, ``d`` delta, ``lo``/``hi``
the one-sided bounds, ``s`` samples; gates: ``m`` metric, ``r`` rule, ``p`` passed, ``x``
message) and is built to fit: numbers are rounded to 6 significant digits, texts are
clipped, and while it is still too long, in this order: the metrics no gate names are
dropped from the end, gate messages are cut to 64 characters, the gated metrics are
dropped from the end (``truncated`` counts dropped metrics), gate messages go. Gates and
their verdicts are never dropped (at most 16 fit by construction).
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

MARKER = "kubetune-evaluation "
#: Kubernetes keeps 4096 bytes; the trainer clips its message at 4000 characters.
MAX_MESSAGE_BYTES = 4000
SUMMARY_VERSION = 1


class _Compact(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class MetricSummary(_Compact):
    """One metric, baseline vs tuned (``None`` where not measured)."""

    name: str = Field(alias="n")
    baseline: float | None = Field(default=None, alias="b")
    tuned: float | None = Field(default=None, alias="t")
    delta: float | None = Field(default=None, alias="d")
    ci_low: float | None = Field(default=None, alias="lo")
    ci_high: float | None = Field(default=None, alias="hi")
    samples: int | None = Field(default=None, alias="s")


class GateSummary(_Compact):
    """One gate's verdict."""

    metric: str = Field(alias="m")
    rule: str = Field(alias="r")
    passed: bool = Field(alias="p")
    message: str = Field(default="", alias="x")


class EvaluationSummary(_Compact):
    """What rank 0 reports; ``verdict`` Failed with no gates means evaluation broke."""

    version: int = Field(default=SUMMARY_VERSION, alias="v")
    verdict: Literal["Passed", "Failed"]
    baseline: str | None = None
    confidence: float | None = None
    metrics: list[MetricSummary] = Field(default_factory=list)
    gates: list[GateSummary] = Field(default_factory=list)
    truncated: int = 0
    message: str = ""

    @property
    def failed_gates(self) -> list[GateSummary]:
        return [g for g in self.gates if not g.passed]


def _round(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None  # JSON has no NaN/inf; "not measured" is what they mean here
    return float(f"{value:.6g}")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dump(summary: EvaluationSummary) -> str:
    return json.dumps(summary.model_dump(by_alias=True, exclude_none=True), separators=(",", ":"))


def encode_summary(summary: EvaluationSummary, budget: int = MAX_MESSAGE_BYTES) -> str:
    """The marker line for ``summary``, at most ``budget`` bytes (UTF-8), deterministic."""
    s = summary.model_copy(deep=True)
    s.message = _clip(s.message, 256)
    s.baseline = _clip(s.baseline, 512) if s.baseline else s.baseline
    for m in s.metrics:
        for key in ("baseline", "tuned", "delta", "ci_low", "ci_high"):
            setattr(m, key, _round(getattr(m, key)))
    for g in s.gates:
        g.rule, g.message = _clip(g.rule, 96), _clip(g.message, 160)
    gated = {g.metric for g in s.gates}
    line = MARKER + _dump(s)

    def drop(names: list[str]) -> None:
        nonlocal line
        while len(line.encode()) > budget and names:
            name = names.pop(0)
            s.metrics = [m for m in s.metrics if m.name != name]
            s.truncated += 1
            line = MARKER + _dump(s)

    def shorten(limit: int) -> None:
        nonlocal line
        if len(line.encode()) > budget:
            for g in s.gates:
                g.message = _clip(g.message, limit) if limit else ""
            s.message = _clip(s.message, max(limit, 64))
            line = MARKER + _dump(s)

    drop([m.name for m in reversed(s.metrics) if m.name not in gated])
    shorten(64)
    drop([m.name for m in reversed(s.metrics) if m.name in gated])
    shorten(0)  # the last resort: gate details go, verdicts stay
    if len(line.encode()) > budget:
        raise ValueError(f"evaluation summary does not fit in {budget} bytes")
    return line


def summary_document(summary: EvaluationSummary) -> dict[str, Any]:
    """The summary with readable camelCase keys (evaluation.json, the CLI's table)."""
    return _camel(summary.model_dump(mode="json", by_alias=False))


def _camel(value: Any) -> Any:
    if isinstance(value, dict):
        return {to_camel(k): _camel(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_camel(v) for v in value]
    return value


def termination_message(first_line: str, summary: EvaluationSummary | None) -> str:
    """The whole termination message: a human line, then the summary line when there is one."""
    if summary is None:
        return first_line[:MAX_MESSAGE_BYTES]
    head = first_line.splitlines()[0] if first_line else ""
    head = head.encode()[:512].decode(errors="ignore")
    line = encode_summary(summary, MAX_MESSAGE_BYTES - len(head.encode()) - 1)
    return f"{head}\n{line}"


def parse_termination_message(text: str | None) -> EvaluationSummary | None:
    """The summary in a termination message; None when absent or unreadable."""
    for line in (text or "").splitlines():
        if line.startswith(MARKER):
            try:
                return EvaluationSummary.model_validate_json(line[len(MARKER) :])
            except ValidationError:
                return None
    return None
