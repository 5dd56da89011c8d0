"""The rollout metrics (rollout/metrics.py): per-rollout counters that start at 0 and go
with their rollout, and the pause-reason gauge read from the cache at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from kubetune.api.rollout import Measurement
from kubetune.contract.metrics import ROLLOUT_METRICS
from kubetune_operator.rollout.metrics import (
    ABORT_REASONS,
    VERDICTS,
    RolloutMetrics,
    RolloutSample,
)


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


def _samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition by (name, labels)."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in registry.collect():
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return _samples(registry).get((name, frozenset(labels.items())))


def _setup(
    rollouts: list[RolloutSample] | None = None,
) -> tuple[CollectorRegistry, RolloutMetrics]:
    registry = CollectorRegistry()
    return registry, RolloutMetrics(registry, lambda: list(rollouts or []))


def test_every_rollout_metric_names_the_rollout() -> None:
    for spec in ROLLOUT_METRICS:
        assert spec.label_names[:2] == ("namespace", "modelrollout"), spec.name


def test_a_rollouts_series_start_at_zero_so_the_first_error_counts() -> None:
    registry, metrics = _setup()
    metrics.start("ml", "r", ["latency", "feedback"])
    for metric in ("latency", "feedback"):
        for verdict in VERDICTS:
            got = _value(
                registry,
                "kubetune_rollout_measurements_total",
                namespace="ml",
                modelrollout="r",
                metric=metric,
                verdict=verdict,
            )
            assert got == 0.0, (metric, verdict)
    for reason in ABORT_REASONS:
        got = _value(
            registry,
            "kubetune_rollout_aborts_total",
            namespace="ml",
            modelrollout="r",
            reason=reason,
        )
        assert got == 0.0, reason
    promotions = "kubetune_rollout_promotions_total"
    assert _value(registry, promotions, namespace="ml", modelrollout="r") == 0.0
    # a metric added to the spec later starts at 0 too; the first Error is then an increase
    metrics.start("ml", "r", ["latency", "tokens"])
    labels = {"namespace": "ml", "modelrollout": "r", "metric": "tokens"}
    assert _value(registry, "kubetune_rollout_measurements_total", **labels, verdict="Error") == 0
    metrics.record("ml", "r", [_measurement("tokens", "Error")], None, False)
    assert _value(registry, "kubetune_rollout_measurements_total", **labels, verdict="Error") == 1


def test_counters_are_per_rollout_and_a_deleted_rollouts_series_go() -> None:
    registry, metrics = _setup()
    metrics.start("ml", "a", ["latency"])
    metrics.start("ml", "b", ["latency"])
    metrics.record("ml", "a", [_measurement("latency", "Inconclusive")], "MetricFailed", False)
    metrics.record("ml", "b", [_measurement("latency", "Successful")], None, True)
    m = "kubetune_rollout_measurements_total"
    a = {"namespace": "ml", "modelrollout": "a", "metric": "latency"}
    b = {"namespace": "ml", "modelrollout": "b", "metric": "latency"}
    assert _value(registry, m, **a, verdict="Inconclusive") == 1
    assert _value(registry, m, **b, verdict="Inconclusive") == 0
    aborts = "kubetune_rollout_aborts_total"
    assert _value(registry, aborts, namespace="ml", modelrollout="a", reason="MetricFailed") == 1
    assert _value(registry, aborts, namespace="ml", modelrollout="b", reason="MetricFailed") == 0
    promotions = "kubetune_rollout_promotions_total"
    assert _value(registry, promotions, namespace="ml", modelrollout="b") == 1

    metrics.forget("ml", "a")
    left = {dict(labels).get("modelrollout") for (name, labels) in _samples(registry)}
    assert left == {"b"}
    assert len(_samples(registry)) == 4 + 5 + 1  # b: 1 metric x 4 verdicts, 5 reasons, 1
    metrics.forget("ml", "a")  # twice, or never seen: nothing to do
    metrics.forget("ml", "never")
    # a rollout created again under the same name starts from 0 again
    metrics.start("ml", "a", ["latency"])
    assert _value(registry, aborts, namespace="ml", modelrollout="a", reason="MetricFailed") == 0


def test_paused_says_why_only_while_paused() -> None:
    rollouts = [
        RolloutSample("ml", "stuck", "Paused", 10, "AnalysisInconclusive"),
        RolloutSample("ml", "waiting", "Paused", 20, "PauseStep"),
        RolloutSample("ml", "moving", "Progressing", 50, "PauseStep"),  # a stale reason
        RolloutSample("ml", "new", "Pending", 0),
    ]
    registry, _ = _setup(rollouts)
    paused = "kubetune_rollout_paused"
    expected = {
        "stuck": {"AnalysisInconclusive": 1, "PauseStep": 0},
        "waiting": {"AnalysisInconclusive": 0, "PauseStep": 1},
        "moving": {"AnalysisInconclusive": 0, "PauseStep": 0},
        "new": {"AnalysisInconclusive": 0, "PauseStep": 0},
    }
    for name, reasons in expected.items():
        for reason, value in reasons.items():
            got = _value(registry, paused, namespace="ml", modelrollout=name, reason=reason)
            assert got == value, (name, reason)
    assert b"# TYPE kubetune_rollout_paused gauge" in generate_latest(registry)
