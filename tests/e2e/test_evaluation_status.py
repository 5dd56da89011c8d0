"""Evaluation gates through the real API server and the operator process: rank 0's
termination message (played by KWOK's exit-message annotation) becomes status.evaluation,
the Promotable condition and an Event; the job still Succeeds."""

from __future__ import annotations

import pytest
import yaml

from kubetune.contract.evaluation import (
    EvaluationSummary,
    GateSummary,
    MetricSummary,
    termination_message,
)
from kubetune.devcluster.testing import Cluster
from tests.e2e.operator_helpers import (  # noqa: F401  (fixtures)
    Operators,
    condition,
    events,
    finish_pod,
    manifest,
    ns_fixture,
    operator_fixture,
    operators_fixture,
    start_running,
    wait_phase,
    worker_pods,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

EVALUATION = {
    "sets": [{"name": "qa", "uri": "/data/qa.jsonl", "metrics": [{"type": "exactMatch"}]}],
    "gates": [{"metric": "qa/exactMatch", "atLeast": 0.9}],
}

FAILING = EvaluationSummary(
    verdict="Failed",
    baseline="/models/tiny-llama",
    confidence=0.95,
    metrics=[
        MetricSummary(
            name="qa/exactMatch",
            baseline=0.5,
            tuned=0.625,
            delta=0.125,
            ci_low=-0.125,
            ci_high=0.375,
            samples=8,
        )
    ],
    gates=[
        GateSummary(
            metric="qa/exactMatch",
            rule="tuned >= 0.9",
            passed=False,
            message="tuned = 0.625, atLeast 0.9",
        )
    ],
    message="1 of 1 gates failed: qa/exactMatch: tuned = 0.625, atLeast 0.9",
)


def _finish_gang(cluster: Cluster, ns: str, name: str, rank0_message: str | None) -> None:
    for pod in worker_pods(cluster, ns, name):
        rank = pod["metadata"]["labels"].get("kubetune.io/rank")
        message = rank0_message if rank == "0" else None
        finish_pod(cluster, ns, pod["metadata"]["name"], 0, message=message)


def test_failed_gate_succeeds_not_promotable(
    cluster: Cluster, ns: str, operator: Operators
) -> None:
    start_running(cluster, ns, "gated", evaluation=EVALUATION)
    message = termination_message("training finished: 10 steps, outputs in /out", FAILING)
    _finish_gang(cluster, ns, "gated", message)
    status = wait_phase(cluster, ns, "gated", "Succeeded")
    promotable = condition(status, "Promotable")
    assert promotable["status"] == "False" and promotable["reason"] == "EvaluationGateFailed"
    assert "qa/exactMatch" in promotable["message"] and "0.625" in promotable["message"]
    ev = status["evaluation"]
    assert ev["verdict"] == "Failed" and ev["promotable"] is False
    assert ev["metrics"][0]["ciLow"] == -0.125 and ev["metrics"][0]["samples"] == 8
    assert ev["gates"] == [
        {
            "metric": "qa/exactMatch",
            "rule": "tuned >= 0.9",
            "passed": False,
            "message": "tuned = 0.625, atLeast 0.9",
        }
    ]
    warnings = [e for e in events(cluster, ns, "gated") if e["reason"] == "EvaluationGateFailed"]
    assert warnings and warnings[0]["type"] == "Warning"
    assert "qa/exactMatch" in warnings[0]["message"]


def test_job_without_evaluation_is_promotable(
    cluster: Cluster, ns: str, operator: Operators
) -> None:
    start_running(cluster, ns, "plain")
    _finish_gang(cluster, ns, "plain", None)
    status = wait_phase(cluster, ns, "plain", "Succeeded")
    promotable = condition(status, "Promotable")
    assert (promotable["status"], promotable["reason"]) == ("True", "NoEvaluationGates")
    assert "evaluation" not in status


def test_api_server_refuses_a_gate_on_an_undeclared_metric(
    cluster: Cluster, ns: str, operator: Operators
) -> None:
    bad = {**EVALUATION, "gates": [{"metric": "qa/contains", "atLeast": 0.5}]}
    doc = manifest("bad-gate", ns, evaluation=bad)
    proc = cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc), check=False
    )
    assert proc.returncode != 0
    assert "every gate must name a declared metric" in proc.stderr, proc.stderr
