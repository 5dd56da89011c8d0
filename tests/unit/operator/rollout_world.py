"""A fake world for the ModelRollout state machine: a route whose weights follow the
decisions, a candidate FineTuneJob, a clock, and scripted analysis outcomes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kubetune.api.rollout import Measurement, MetricStatus, ModelRollout
from kubetune_operator.rollout.analysis import AnalysisOutcome, MetricResult
from kubetune_operator.rollout.route import RouteWeights
from kubetune_operator.rollout.state import (
    AnalysisRequest,
    AnalysisRun,
    CandidateJob,
    Decision,
    Observation,
    analysis_due,
    decide,
)

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)

Outcome = Callable[[AnalysisRequest], tuple[str, AnalysisOutcome]]


def rollout_doc(steps: list[Any], *, analysis: bool = True, deadline: int = 600) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "target": {"name": "chat"},
        "baseline": {"modelName": "base", "backendRef": {"name": "base", "port": 8000}},
        "candidate": {
            "modelName": "tuned",
            "backendRef": {"name": "tuned", "port": 8000},
            "fineTuneJob": "sft",
        },
        "steps": steps,
        "progressDeadlineSeconds": deadline,
    }
    if analysis:
        spec["analysis"] = {
            "intervalSeconds": 30,
            "metrics": [
                {"name": "latency", "direction": "LowerIsBetter", "query": "q", "threshold": 1}
            ],
        }
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": "r", "namespace": "ml", "generation": 1, "annotations": {}},
        "spec": spec,
    }


def passing(request: AnalysisRequest) -> tuple[str, AnalysisOutcome]:
    """Every measurement successful; an analysis step passes at its first interval."""
    return "Successful", AnalysisOutcome(step_passed=request.step is not None)


def failing(request: AnalysisRequest) -> tuple[str, AnalysisOutcome]:
    return "Failed", AnalysisOutcome(
        abort_reason="MetricFailed", abort_metric="latency", abort_message="latency 3 > 1"
    )


def no_data(request: AnalysisRequest) -> tuple[str, AnalysisOutcome]:
    step = request.step
    done = step is not None and request.step_intervals >= step.max_intervals
    return "Inconclusive", AnalysisOutcome(inconclusive=done)


@dataclass
class World:
    doc: dict[str, Any]
    outcome: Outcome = passing
    now: datetime = T0
    route: RouteWeights | str = field(default_factory=lambda: RouteWeights(100, None))
    job: CandidateJob | None = field(
        default_factory=lambda: CandidateJob("Succeeded", "True", "gates passed")
    )
    decisions: list[Decision] = field(default_factory=list)
    writes: list[tuple[datetime, int]] = field(default_factory=list)  # (when, candidate weight)
    measured_at: list[datetime] = field(default_factory=list)
    failed_at: list[datetime] = field(default_factory=list)

    @property
    def rollout(self) -> ModelRollout:
        return ModelRollout.model_validate(self.doc)

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.doc.get("status") or {})

    @property
    def phase(self) -> str:
        return str(self.status.get("phase"))

    def weights(self) -> tuple[int | None, int | None]:
        assert isinstance(self.route, RouteWeights)
        return self.route.baseline, self.route.candidate

    def annotate(self, name: str, value: str) -> None:
        self.doc["metadata"]["annotations"][name] = value

    def reconcile(self) -> Decision:
        rollout = self.rollout
        request = analysis_due(rollout, self.now)
        run = None
        if request is not None:
            verdict, outcome = self.outcome(request)
            self.measured_at.append(self.now)
            if verdict == "Failed":
                self.failed_at.append(self.now)
            m = Measurement(
                metric="latency",
                time=self.now,
                step=request.context.step,
                weight=request.context.weight,
                verdict=verdict,
                message=verdict,
            )
            run = AnalysisRun(
                [MetricResult(m, None)],
                [MetricStatus(name="latency", last_verdict=m.verdict)],
                outcome,
            )
        decision = decide(Observation(rollout, self.now, self.route, self.job, run))
        if decision.set_weight is not None:
            assert isinstance(self.route, RouteWeights)
            self.route = RouteWeights(100 - decision.set_weight, decision.set_weight)
            self.writes.append((self.now, decision.set_weight))
        self.doc["status"] = decision.status.model_dump(
            mode="json", by_alias=True, exclude_none=True
        )
        for name in decision.remove_annotations:
            self.doc["metadata"]["annotations"].pop(name, None)
        self.decisions.append(decision)
        return decision

    def run_for(self, seconds: float, *, until: Callable[[World], bool] | None = None) -> None:
        """Reconcile whenever the machine asked to (and at least every 5 s) for ``seconds``."""
        end = self.now + timedelta(seconds=seconds)
        while self.now <= end:
            decision = self.reconcile()
            if until is not None and until(self):
                return
            step = decision.requeue_after if decision.requeue_after is not None else 5.0
            self.now += timedelta(seconds=min(step, 5.0))

    def events(self) -> list[tuple[str, str]]:
        return [(e.type, e.reason) for d in self.decisions for e in d.events]
