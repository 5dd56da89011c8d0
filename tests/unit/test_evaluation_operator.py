"""The operator turns rank 0's evaluation summary into status.evaluation, the Promotable
condition and an Event when the job Succeeds; never promotable by accident."""

from __future__ import annotations

from typing import Any

from kubetune.contract.evaluation import (
    EvaluationSummary,
    GateSummary,
    MetricSummary,
    termination_message,
)
from tests.unit.operator.conftest import FakeCluster, job_manifest

EVALUATION = {
    "sets": [{"name": "qa", "uri": "pvc://data/qa.jsonl", "metrics": [{"type": "exactMatch"}]}],
    "gates": [{"metric": "qa/exactMatch", "noWorseThanBaseline": {"tolerance": 0.02}}],
}


def _summary(passed: bool) -> EvaluationSummary:
    return EvaluationSummary(
        verdict="Passed" if passed else "Failed",
        baseline="pvc://models/llama-8b",
        confidence=0.95,
        metrics=[
            MetricSummary(
                name="qa/exactMatch",
                baseline=0.6,
                tuned=0.5,
                delta=-0.1,
                ci_low=-0.16,
                ci_high=-0.04,
                samples=200,
            )
        ],
        gates=[
            GateSummary(
                metric="qa/exactMatch",
                rule="lower 95% bound of tuned - baseline >= -0.02",
                passed=passed,
                message="lower 95% bound of tuned - baseline = -0.16 < -0.02",
            )
        ],
        message="1 of 1 gates failed" if not passed else "all 1 gates passed",
    )


def _succeed(cluster: FakeCluster, rank0_message: str | None) -> None:
    cluster.start_running()
    cluster.finish("tune-a1-1", 0)
    if rank0_message is None:
        cluster.finish("tune-a1-0", 0)
    else:
        cluster.finish("tune-a1-0", 0, message=rank0_message)
    cluster.step()
    assert cluster.status["phase"] == "Succeeded"


def _cluster(**spec: Any) -> FakeCluster:
    return FakeCluster(job_manifest(**spec))


def test_failed_gate_succeeds_but_is_not_promotable() -> None:
    c = _cluster(evaluation=EVALUATION)
    _succeed(c, termination_message("training finished: 10 steps", _summary(passed=False)))
    ev = c.status["evaluation"]
    assert ev["verdict"] == "Failed" and ev["promotable"] is False
    assert ev["baseline"] == "pvc://models/llama-8b"
    [metric] = ev["metrics"]
    assert metric == {
        "name": "qa/exactMatch",
        "baseline": 0.6,
        "tuned": 0.5,
        "delta": -0.1,
        "ciLow": -0.16,
        "ciHigh": -0.04,
        "samples": 200,
    }
    assert ev["gates"][0]["passed"] is False
    cond = c.condition("Promotable")
    assert cond is not None and cond["status"] == "False"
    assert cond["reason"] == "EvaluationGateFailed"
    assert "qa/exactMatch" in cond["message"] and "-0.16" in cond["message"]
    assert c.condition("Succeeded")["status"] == "True"  # type: ignore[index]
    warnings = [e for e in c.events if e[1] == "EvaluationGateFailed"]
    assert warnings and warnings[0][0] == "Warning" and "qa/exactMatch" in warnings[0][2]


def test_passed_gates_are_promotable() -> None:
    c = _cluster(evaluation=EVALUATION)
    _succeed(c, termination_message("training finished: 10 steps", _summary(passed=True)))
    assert c.status["evaluation"]["verdict"] == "Passed"
    assert c.status["evaluation"]["promotable"] is True
    cond = c.condition("Promotable")
    assert cond is not None and (cond["status"], cond["reason"]) == ("True", "EvaluationPassed")


def test_missing_summary_is_never_promotable() -> None:
    c = _cluster(evaluation=EVALUATION)
    _succeed(c, "training finished: 10 steps")
    assert c.status["evaluation"]["verdict"] == "NotEvaluated"
    assert c.status["evaluation"]["promotable"] is False
    cond = c.condition("Promotable")
    assert cond is not None and (cond["status"], cond["reason"]) == ("False", "EvaluationMissing")


def test_evaluation_that_could_not_run() -> None:
    broken = EvaluationSummary(verdict="Failed", message="evaluation could not run: boom")
    c = _cluster(evaluation=EVALUATION)
    _succeed(c, termination_message("training finished: 10 steps", broken))
    cond = c.condition("Promotable")
    assert cond is not None and (cond["status"], cond["reason"]) == ("False", "EvaluationFailed")
    assert "could not run" in cond["message"]


def test_no_evaluation_is_promotable_without_status_evaluation() -> None:
    c = _cluster()
    c.start_running()
    assert c.condition("Promotable") is None  # absent until the job Succeeds
    c.finish("tune-a1-0", 0)
    c.finish("tune-a1-1", 0)
    c.step()
    cond = c.condition("Promotable")
    assert cond is not None and (cond["status"], cond["reason"]) == ("True", "NoEvaluationGates")
    assert "evaluation" not in c.status or c.status["evaluation"] is None
