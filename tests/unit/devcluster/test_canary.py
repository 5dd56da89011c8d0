"""The canary lab's pure parts: the manifests it sends, and how detection time is measured."""

from __future__ import annotations

from typing import Any

from kubetune.api.rollout import ModelRollout
from kubetune.devcluster.canary import (
    BASELINE_MODEL,
    CANDIDATE_MODEL,
    SCENARIOS,
    CanaryResult,
    LabSettings,
    rollout_manifest,
    route_manifest,
    route_weights,
    summarize_detection,
    timeline_queries,
)
from kubetune.devcluster.prometheus import SERVE_JOB, ScrapeSettings, render_config

T0 = 1_800_000_000.0


def _at(seconds: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(T0 + seconds, UTC).isoformat().replace("+00:00", "Z")


def test_rollout_manifest_is_a_valid_model_rollout_with_one_analysis_per_weight() -> None:
    settings = LabSettings(weights=(10, 40, 70))
    doc = rollout_manifest("r", "ns", settings, "http://127.0.0.1:9090", job="j")
    rollout = ModelRollout.model_validate(doc)
    spec = rollout.spec
    assert [s.set_weight for s in spec.steps[::2]] == [10, 40, 70]
    assert all(s.analysis is not None for s in spec.steps[1::2])
    assert spec.analysis is not None and spec.analysis.prometheus is not None
    assert spec.analysis.prometheus.address == "http://127.0.0.1:9090"
    assert spec.candidate.fine_tune_job == "j"
    # every fault a scenario injects is watched by the metric that must catch it
    names = {m.name for m in spec.analysis.metrics}
    assert {s.fault_metric for s in SCENARIOS.values() if s.bad} <= names
    # the error ratio never divides by zero: an idle model is "no data", not NaN or 100 %
    errors = next(m for m in spec.analysis.metrics if m.name == "error-rate")
    assert errors.query is not None and "clamp_min" in errors.query


def test_route_starts_all_on_the_baseline() -> None:
    assert route_weights(route_manifest("ns")) == {BASELINE_MODEL: 100, CANDIDATE_MODEL: 0}
    # an unset weight is 1, as the Gateway API defaults it
    route = {"spec": {"rules": [{"backendRefs": [{"name": "a"}, {"name": "b", "weight": 0}]}]}}
    assert route_weights(route) == {"a": 1, "b": 0}


def test_timeline_queries_select_both_models_unescaped() -> None:
    queries = timeline_queries((BASELINE_MODEL, CANDIDATE_MODEL))
    assert set(queries) == {"p95_latency_s", "error_rate", "requests_per_s", "positive_share"}
    for expr in queries.values():
        assert f'model_name=~"{BASELINE_MODEL}|{CANDIDATE_MODEL}"' in expr
        assert "\\" not in expr  # PromQL strings reject unknown escapes such as \-


def test_model_servers_have_a_scrape_pool_of_their_own(tmp_path: Any) -> None:
    config = render_config(ScrapeSettings(file_sd_dir=tmp_path))
    [serve] = [j for j in config["scrape_configs"] if j["job_name"] == SERVE_JOB]
    assert serve["file_sd_configs"][0]["files"] == [str(tmp_path / "serve" / "*.json")]
    assert "relabel_configs" not in serve  # not relabeled into the trainers' job


def _result(measurements: list[dict[str, Any]], abort: dict[str, Any] | None) -> CanaryResult:
    return CanaryResult(
        "latency", "RolledBack", 0, "RolledBack", 5, T0, T0 + 60,
        measurements=measurements, abort=abort,
    )  # fmt: skip


def test_detection_starts_at_the_first_measurement_with_enough_candidate_samples() -> None:
    def m(t: float, verdict: str, samples: float, weight: int = 25) -> dict[str, Any]:
        return {
            "metric": "p95-latency",
            "time": _at(t),
            "verdict": verdict,
            "candidateSamples": samples,
            "weight": weight,
        }

    result = _result(
        [
            m(1, "Inconclusive", 0, weight=0),  # before the candidate had traffic
            m(6, "Inconclusive", 1),  # too few samples to see anything
            m(11, "Inconclusive", 4),  # enough candidate samples (baseline short): visible
            m(16, "Failed", 8),
            {"metric": "error-rate", "time": _at(2), "verdict": "Failed", "weight": 25},
        ],
        {"metric": "p95-latency", "time": _at(16.5)},
    )
    result.weight_zero_at = T0 + 17.0
    summarize_detection(result, "p95-latency", {"p95-latency": 3})
    assert result.fault_visible_at == T0 + 11
    assert result.first_failure_at == T0 + 16
    assert result.detect_s == 6.0
    assert result.react_s == 1.0
    assert result.to_json()["detect_intervals"] == 6.0 / 5


def test_a_sequential_abort_counts_from_the_abort_record() -> None:
    result = _result([], {"metric": "positive-feedback", "time": _at(20)})
    result.weight_zero_at = T0 + 20.4
    summarize_detection(result, "positive-feedback", {"positive-feedback": 10})
    assert result.first_failure_at == T0 + 20
    assert result.react_s is not None and abs(result.react_s - 0.4) < 1e-6


def test_plot_draws_weights_and_both_models_metrics(tmp_path: Any) -> None:
    from kubetune.devcluster.canary.plot import plot_result

    result = _result([], {"reason": "MetricFailed", "metric": "p95-latency", "time": _at(9)})
    result.step_changes = [{"time": T0, "step": 0}, {"time": T0 + 3, "step": 1}]
    result.weight_zero_at = T0 + 9.5
    for t in range(12):
        metrics = {
            BASELINE_MODEL: {"p95_latency_s": 0.05, "error_rate": 0.0, "positive_share": 0.8},
            CANDIDATE_MODEL: {"p95_latency_s": 1.1, "error_rate": None, "positive_share": 0.8},
        }
        weight = 25 if 2 <= t < 10 else 0
        result.timeline.append(
            {"t": t, "time": T0 + t, "phase": "Progressing", "candidate_weight": weight,
             "metrics": metrics}
        )  # fmt: skip
    path = plot_result(result, tmp_path / "canary.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


def test_weight_zero_write_and_exposure_from_first_traffic() -> None:
    from kubetune.devcluster.canary import weight_zero_time

    def change(t: float, weight: int) -> dict[str, Any]:
        return {"time": T0 + t, "weights": {BASELINE_MODEL: 100 - weight, CANDIDATE_MODEL: weight}}

    initial = [change(0, 0)]  # the route as created: candidate listed at 0 -- not an abort
    assert weight_zero_time(initial) is None
    changes = [*initial, change(3, 25), change(9.5, 0)]
    assert weight_zero_time(changes) == T0 + 9.5
    result = _result([], None)
    result.route_changes = changes
    result.weight_zero_at = weight_zero_time(changes)
    assert result.exposed_at == T0 + 3
    assert result.exposure_s == 6.5
    # a promotion never writes the candidate back to 0
    assert weight_zero_time([*initial, change(3, 25), change(9, 50), change(15, 100)]) is None
