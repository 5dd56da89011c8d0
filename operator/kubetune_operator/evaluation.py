"""From rank 0's termination message to ``status.evaluation`` and the Promotable condition.

Decided once, when the job Succeeds. Never promotable by accident: a job with
``spec.evaluation`` whose summary did not arrive (or does not parse) is NotEvaluated and
not promotable; only a job without ``spec.evaluation`` is promotable without a summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kubetune.api.evaluation import EvaluationStatus, GateResult, MetricResult
from kubetune.api.job import FineTuneJob
from kubetune.contract.evaluation import EvaluationSummary, parse_termination_message
from kubetune_operator.observed import PodView
from kubetune_operator.plan import EventType

EVALUATION_PASSED = "EvaluationPassed"
NO_EVALUATION_GATES = "NoEvaluationGates"
EVALUATION_GATE_FAILED = "EvaluationGateFailed"
EVALUATION_FAILED = "EvaluationFailed"
EVALUATION_MISSING = "EvaluationMissing"

_MESSAGE = 1024


@dataclass(frozen=True)
class Outcome:
    """What the operator records for a succeeded job."""

    status: EvaluationStatus | None
    promotable: bool
    reason: str
    message: str
    event: tuple[EventType, str, str] | None = None


def _status(summary: EvaluationSummary, promotable: bool, now: datetime) -> EvaluationStatus:
    return EvaluationStatus(
        verdict=summary.verdict,
        promotable=promotable,
        baseline=(summary.baseline or "")[:1024] or None,
        completed_at=now,
        confidence=summary.confidence,
        metrics=[
            MetricResult(
                name=m.name[:127],
                baseline=m.baseline,
                tuned=m.tuned,
                delta=m.delta,
                ci_low=m.ci_low,
                ci_high=m.ci_high,
                samples=m.samples,
            )
            for m in summary.metrics[:66]
        ],
        gates=[
            GateResult(
                metric=g.metric[:127], rule=g.rule[:256], passed=g.passed, message=g.message[:512]
            )
            for g in summary.gates[:16]
        ],
        truncated=summary.truncated,
        message=summary.message[:_MESSAGE],
    )


def outcome(job: FineTuneJob, rank0: PodView | None, now: datetime) -> Outcome:
    """The evaluation verdict of a job whose gang just succeeded."""
    if job.spec.evaluation is None:
        return Outcome(None, True, NO_EVALUATION_GATES, "the job has no spec.evaluation")
    text = rank0.exit.message if rank0 is not None and rank0.exit is not None else None
    summary = parse_termination_message(text)
    if summary is None:
        message = (
            "spec.evaluation is set but rank 0 reported no readable evaluation summary in its "
            "termination message; the model is not promotable"
        )
        status = EvaluationStatus(
            verdict="NotEvaluated",
            promotable=False,
            baseline=job.spec.evaluation.baseline or job.spec.model.uri,
            completed_at=now,
            message=message,
        )
        return Outcome(
            status, False, EVALUATION_MISSING, message, ("Warning", EVALUATION_MISSING, message)
        )
    failed = summary.failed_gates
    if summary.verdict == "Passed" and not failed:
        message = f"evaluation passed: {summary.message}"[:_MESSAGE]
        return Outcome(
            _status(summary, True, now),
            True,
            EVALUATION_PASSED,
            message,
            ("Normal", EVALUATION_PASSED, message),
        )
    if failed:
        names = ", ".join(g.metric for g in failed)
        details = "; ".join(f"{g.metric} ({g.rule}): {g.message}" for g in failed)
        message = f"evaluation gates failed: {details}"[:_MESSAGE]
        event = f"gate {names} failed: {details}"
        return Outcome(
            _status(summary, False, now),
            False,
            EVALUATION_GATE_FAILED,
            message,
            ("Warning", EVALUATION_GATE_FAILED, event),
        )
    message = (summary.message or "evaluation did not complete")[:_MESSAGE]
    return Outcome(
        _status(summary, False, now),
        False,
        EVALUATION_FAILED,
        message,
        ("Warning", EVALUATION_FAILED, message),
    )
