"""The ModelRollout dashboard and alert rules against a real Prometheus scraping the real
rollout metrics (operator/kubetune_operator/rollout/metrics.py, served over HTTP).

The big e2e test (test_dashboards_and_alerts_e2e.py) runs no ModelRollout, so this one makes
the rollout series: two rollouts in one namespace, one canary paused on an inconclusive
analysis, then rolled back by a failing metric after Successful, Inconclusive and Error
measurements, the other measured and promoted. Every series is per rollout, so the
selected canary's panels must not show its neighbour's measurements or promotion.
Prometheus scrapes the registry every second and loads charts/kubetune/files/rules/rollout.yaml
as it ships. Then every target of the dashboard is a range query over the run that must
not error and must return data, with the values the scenario implies, and every rollout
rule is healthy.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from kubetune.api.rollout import Measurement
from kubetune.dashboards.queries import format_legend, iter_panel_queries
from kubetune.devcluster.prometheus import OPERATOR_JOB
from kubetune_operator.rollout.metrics import RolloutMetrics, RolloutSample
from tests.observability.panel_checks import TargetResult, load_dashboard, rule_expressions
from tests.observability.prometheus_helpers import Prometheus, PromQLError

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
BOARD = REPO / "charts" / "kubetune" / "files" / "dashboards" / "kubetune-rollout.json"
RULES = REPO / "charts" / "kubetune" / "files" / "rules" / "rollout.yaml"
NAMESPACE = "team-a"
CANARY = "support-bot"  # rolled back
OTHER = "chat"  # promoted
HOLD = 2.5  # seconds each state is held: at least two 1s scrapes
METRICS = ("latency-p95", "feedback")  # both rollouts' spec.analysis.metrics


class FakeController:
    """The rollout controller's side of the metrics: current rollouts and what it records."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rollouts: dict[str, RolloutSample] = {}
        self.metrics = RolloutMetrics(registry, lambda: list(self.rollouts.values()))

    def set(self, name: str, phase: str, weight: int, pause_reason: str | None = None) -> None:
        self.rollouts[name] = RolloutSample(NAMESPACE, name, phase, weight, pause_reason)
        # the first reconcile starts the rollout's series at 0 (as the controller does)
        self.metrics.start(NAMESPACE, name, METRICS)

    def record(
        self,
        name: str,
        verdicts: dict[str, str],
        aborted: str | None = None,
        promoted: bool = False,
    ) -> None:
        measured = [_measurement(metric, verdict) for metric, verdict in verdicts.items()]
        self.metrics.record(NAMESPACE, name, measured, aborted, promoted)


def _measurement(metric: str, verdict: str) -> Measurement:
    return Measurement.model_validate(
        {
            "metric": metric,
            "time": "2026-01-01T00:00:00Z",
            "step": 0,
            "weight": 10,
            "verdict": verdict,
        }
    )


@pytest.fixture
def registry() -> Iterator[tuple[CollectorRegistry, int]]:
    """An operator-like registry (with the leader gauge) served on a free port."""
    registry = CollectorRegistry()
    Gauge("kubetune_operator_leader", "1 on the replica holding the lease.", registry=registry).set(
        1
    )
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    yield registry, server.server_port
    server.shutdown()
    thread.join(timeout=5)


def _drive(controller: FakeController) -> float:
    """support-bot: 10 %, measured, paused as inconclusive, 50 %, a failing metric rolls it
    back; chat: measured Successful (inconclusive feedback too), promoted. Returns a time at
    which support-bot was paused."""
    controller.set(CANARY, "Pending", 0)
    controller.set(OTHER, "Progressing", 20)
    time.sleep(HOLD)
    controller.set(CANARY, "Progressing", 10)
    controller.record(CANARY, {"latency-p95": "Successful", "feedback": "Inconclusive"})
    controller.record(OTHER, {"latency-p95": "Successful", "feedback": "Successful"})
    time.sleep(HOLD)
    controller.record(CANARY, {"latency-p95": "Successful", "feedback": "Inconclusive"})
    controller.record(OTHER, {"latency-p95": "Successful", "feedback": "Inconclusive"})
    controller.set(CANARY, "Paused", 10, "AnalysisInconclusive")
    time.sleep(HOLD)
    paused_at = time.time()
    controller.set(CANARY, "Progressing", 50)
    controller.record(CANARY, {"latency-p95": "Error", "feedback": "Successful"})
    time.sleep(HOLD)
    controller.record(CANARY, {"latency-p95": "Failed", "feedback": "Successful"})
    controller.record(CANARY, {"latency-p95": "Failed"}, aborted="MetricFailed")
    controller.set(CANARY, "RolledBack", 0)
    controller.set(OTHER, "Promoted", 100)
    controller.record(OTHER, {}, promoted=True)
    time.sleep(HOLD)
    return paused_at


def _evaluate(prom: Prometheus, start: float, end: float) -> list[TargetResult]:
    board = load_dashboard(BOARD)
    window = f"{int(end - start) + 10}s"
    results = []
    for query in iter_panel_queries(
        board, namespace=NAMESPACE, modelrollout=CANARY, rate_interval="4s", range_=window
    ):
        base = TargetResult(board["uid"], "rollout", query.panel_title, query.expr, query.legend)
        try:
            series = prom.query_range(query.expr, start, end, 1.0)
        except PromQLError as exc:
            results.append(dataclasses.replace(base, error=str(exc)))
        else:
            results.append(dataclasses.replace(base, series=series))
    return results


def _last(result: TargetResult) -> dict[str, float]:
    """The series' values at the last step of the range, by legend (labels filled in); a
    series with no sample there (a phase left earlier) is not shown, as on the panel."""
    end = max(float(s["values"][-1][0]) for s in result.series)
    return {
        format_legend(result.legend, s["metric"]): float(s["values"][-1][1])
        for s in result.series
        if float(s["values"][-1][0]) == end
    }


def test_rollout_dashboard_and_rules_against_real_metrics(
    registry: tuple[CollectorRegistry, int],
    start_prometheus: Callable[..., Prometheus],
) -> None:
    reg, port = registry
    controller = FakeController(reg)
    prom = start_prometheus(operator_targets=[f"127.0.0.1:{port}"], rule_files=[RULES])
    prom.wait_for(f'kubetune_operator_leader{{job="{OPERATOR_JOB}"}} == 1', timeout=30)
    start = time.time()
    paused_at = _drive(controller)
    prom.wait_for('kubetune_rollout_phase{phase="RolledBack"} == 1', timeout=10)
    end = time.time()

    results = _evaluate(prom, start, end)
    errors = [f"{r.panel}: {r.error}" for r in results if r.error]
    assert not errors, errors
    empty = [f"{r.panel}: {r.expr}" for r in results if not r.has_data]
    assert not empty, "panels without data:\n" + "\n".join(empty)
    by_panel = {r.panel: r for r in results}
    assert len(by_panel) == len(results) >= 14

    # what the scenario implies, as the panels show it
    weights = {
        float(v) for s in by_panel["Candidate weight over time"].series for _, v in s["values"]
    }
    assert {0.0, 10.0, 50.0} <= weights
    assert _last(by_panel["Phase"]) == {"RolledBack": 1.0}
    phases = {s["metric"]["phase"] for s in by_panel["Phase over time"].series}
    assert {"Pending", "Progressing", "Paused", "RolledBack"} <= phases
    reasons = {s["metric"]["reason"] for s in by_panel["Pause reason"].series}
    assert reasons == {"AnalysisInconclusive"}
    assert _last(by_panel["Candidate weights in the namespace"]) == {CANARY: 0.0, OTHER: 100.0}
    rollbacks = _last(by_panel["Rollbacks by reason in range"])
    assert rollbacks["MetricFailed"] > 0.5 and rollbacks["QueryErrors"] == 0
    in_namespace = _last(by_panel["Rollbacks in the namespace"])
    assert in_namespace[f"{CANARY} MetricFailed"] > 0.5
    assert in_namespace[f"{OTHER} MetricFailed"] == 0
    # per rollout: the canary's stats leave out its neighbour's promotion and measurements
    [promotions] = _last(by_panel["Promotions"]).values()  # the stat: promotions in range
    assert promotions == 0
    [measurements] = _last(by_panel["Measurements"]).values()
    assert 9 <= measurements < 12  # the canary's 9, extrapolated a little; chat's 4 left out
    shares = _last(by_panel["Inconclusive share by metric"])
    assert shares["latency-p95"] == 0 and shares["feedback"] > 0
    verdicts = {
        s["metric"]["verdict"] for s in by_panel["Measurements by metric and verdict"].series
    }
    assert verdicts == {"Successful", "Inconclusive", "Error", "Failed"}
    # series start at 0: the canary's one and only Error is seen by increase()
    bad = _last(by_panel["Failed and error measurements by metric"])
    assert bad["latency-p95 Error"] > 0.5 and bad["feedback Error"] == 0

    # the rules load, evaluate without error, and the rollback is seen by the alert's expression
    rules = rule_expressions([RULES])
    groups = prom.rules()
    assert sorted(r["name"] for g in groups for r in g["rules"]) == sorted(r.name for r in rules)
    assert all(r["health"] != "err" for g in groups for r in g["rules"]), groups
    for rule in rules:
        prom.query(rule.expr, end)
    by_name = {r.name: r.expr for r in rules}
    [rolled_back] = prom.query(by_name["KubetuneRolloutRolledBack"])
    assert rolled_back["metric"] == {
        "namespace": NAMESPACE,
        "modelrollout": CANARY,
        "reason": "MetricFailed",
    }
    # the stuck alert's condition holds for the canary while it is paused as inconclusive
    [stuck] = prom.query(by_name["KubetuneRolloutStuckInconclusive"], paused_at)
    assert stuck["metric"] == {"namespace": NAMESPACE, "modelrollout": CANARY}
    assert not prom.query(by_name["KubetuneRolloutStuckInconclusive"], end)
