"""Rollout analysis: query templates, verdicts with both values and the limit, running
totals, and the decisions (abort, pass, inconclusive) -- against a fake Prometheus."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from kubetune.api.rollout import AnalysisSpec, AnalysisStep, MetricStatus, SequentialState
from kubetune.api.rollout_queries import (
    QueryTemplateError,
    check_analysis,
    check_query,
    promql_duration,
    promql_string,
    render,
)
from kubetune_operator.rollout.analysis import (
    AnalysisContext,
    MetricResult,
    PrometheusError,
    decide,
    fold,
    measure_all,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
MODEL = re.compile(r'model_name="([^"]*)"')


class FakePrometheus:
    """Answers a query by its text with the ``${model}`` value cut out.

    ``values[(template_name, model)]`` is a number, None (empty result) or an exception.
    The template name is the metric name before ``{``.
    """

    def __init__(self, values: dict[tuple[str, str], Any]) -> None:
        self.values = values
        self.queries: list[str] = []

    async def query(self, promql: str, at: datetime | None = None) -> float | None:
        self.queries.append(promql)
        match = MODEL.search(promql)
        assert match is not None, promql
        value = self.values.get((promql.split("{", 1)[0], match.group(1)))
        if isinstance(value, Exception):
            raise value
        return value


def ctx(**overrides: Any) -> AnalysisContext:
    fields: dict[str, Any] = {
        "namespace": "team",
        "candidate_model": "cand",
        "baseline_model": "base",
        "interval_seconds": 30,
        "window_seconds": 95.2,
        "step": 2,
        "weight": 20,
        "now": T0,
    }
    fields.update(overrides)
    return AnalysisContext(**fields)


def spec(*metrics: dict[str, Any]) -> AnalysisSpec:
    return AnalysisSpec.model_validate({"intervalSeconds": 30, "metrics": list(metrics)})


def latency(**extra: Any) -> dict[str, Any]:
    metric = {
        "name": "latency",
        "direction": "LowerIsBetter",
        "query": 'lat{model_name="${model}", namespace="${namespace}"}',
        "baseline": {"maxRelativeDegradation": 0.2},
    }
    metric.update(extra)
    return metric


def feedback(**extra: Any) -> dict[str, Any]:
    metric = {
        "name": "feedback",
        "direction": "HigherIsBetter",
        "minSamples": 50,
        "sequential": {
            "type": "Proportion",
            "successQuery": 'good{model_name="${model}"}[${window}]',
            "totalQuery": 'votes{model_name="${model}"}[${window}]',
            "minimumDetectableEffect": 0.05,
        },
    }
    metric.update(extra)
    return metric


def measure(analysis: AnalysisSpec, values: dict[tuple[str, str], Any], **kw: Any) -> Any:
    return asyncio.run(measure_all(analysis, ctx(**kw), FakePrometheus(values)))


# -- query templates ------------------------------------------------------------------------
def test_render_substitutes_and_escapes() -> None:
    text = 'x{m="${model}",ns="${namespace}"}[${interval}] / y[${window}]'
    out = render(text, model='a"b\\c', namespace="team", interval_seconds=30, window_seconds=95.2)
    assert out == 'x{m="a\\"b\\\\c",ns="team"}[30s] / y[96s]'
    # the window is never shorter than the interval
    assert (
        render("y[${window}]", model="m", namespace="n", interval_seconds=30, window_seconds=3)
        == "y[30s]"
    )
    assert promql_duration(0.2) == "1s" and promql_string("org/llama-3:8b") == "org/llama-3:8b"


def test_unknown_placeholders_are_problems() -> None:
    assert check_query('x{m="${model}"}[${interval}]') == []
    problems = check_query('x{m="${modle}"}[${interval}] + ${modle}')
    assert len(problems) == 1 and "${modle}" in problems[0] and "${model}" in problems[0]
    assert "unterminated" in check_query("x[${window]")[0]
    with pytest.raises(QueryTemplateError, match="modle"):
        render("${modle}", model="m", namespace="n", interval_seconds=30, window_seconds=30)
    # The schema refuses unknown placeholders; the controller still checks (defence in depth).
    good = spec(latency(), feedback())
    seq = good.metrics[1].sequential
    assert seq is not None
    bad_metric = good.metrics[1].model_copy(
        update={"sequential": seq.model_copy(update={"total_query": "${win}"})}
    )
    bad = good.model_copy(update={"metrics": [good.metrics[0], bad_metric]})
    assert check_analysis(bad) == [
        "spec.analysis.metrics[1].sequential.totalQuery: unknown placeholder ${win} "
        "(known: ${interval}, ${model}, ${namespace}, ${window})"
    ]


# -- threshold metrics ----------------------------------------------------------------------
def test_candidate_worse_than_baseline_allowance_fails_with_both_values() -> None:
    [result] = measure(spec(latency()), {("lat", "cand"): 0.412, ("lat", "base"): 0.25})
    m = result.measurement
    assert m.verdict == "Failed"
    assert m.message == "candidate 0.412 > limit 0.3 (baseline 0.25 + 20 %)"
    assert (m.candidate, m.baseline, m.limit) == (0.412, 0.25, pytest.approx(0.3))
    assert (m.time, m.step, m.weight, m.metric) == (T0, 2, 20, "latency")


def test_candidate_within_allowance_succeeds() -> None:
    [result] = measure(spec(latency()), {("lat", "cand"): 0.29, ("lat", "base"): 0.25})
    assert result.measurement.verdict == "Successful"
    assert result.measurement.message == "candidate 0.29 <= limit 0.3 (baseline 0.25 + 20 %)"


def test_higher_is_better_and_the_larger_allowance_and_tighter_limit() -> None:
    quality = latency(
        name="quality",
        direction="HigherIsBetter",
        baseline={"maxRelativeDegradation": 0.1, "maxAbsoluteDegradation": 0.05},
    )
    # near-zero baseline: the absolute allowance is the larger one
    [r] = measure(spec(quality), {("lat", "cand"): 0.0, ("lat", "base"): 0.06})
    assert r.measurement.verdict == "Failed"
    assert r.measurement.message == "candidate 0 < limit 0.01 (baseline 0.06 - 0.05)"
    # a threshold tighter than the baseline's allowance is the limit
    with_threshold = {**quality, "threshold": 0.8}
    [r] = measure(spec(with_threshold), {("lat", "cand"): 0.79, ("lat", "base"): 0.8})
    assert r.measurement.verdict == "Failed" and r.measurement.limit == 0.8
    assert r.measurement.message == "candidate 0.79 < limit 0.8 (threshold; baseline 0.8)"


def test_threshold_only_does_not_need_the_baseline() -> None:
    metric = latency(baseline=None, threshold=0.5)
    del metric["baseline"]
    [r] = measure(spec(metric), {("lat", "cand"): 0.4})
    assert r.measurement.verdict == "Successful"
    assert r.measurement.message == "candidate 0.4 <= limit 0.5 (threshold; baseline no data)"


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({("lat", "base"): 0.25}, "candidate's query returned no value"),
        ({("lat", "cand"): 0.3}, "baseline's query returned no value"),
        (
            {("lat", "cand"): 0.3, ("lat", "base"): 0.3, ("n", "cand"): 9, ("n", "base"): 500},
            "samples candidate 9, baseline 500; minSamples 10",
        ),
        (
            {("lat", "cand"): 0.3, ("lat", "base"): 0.3, ("n", "cand"): None},
            "samples candidate 0, baseline 100",
        ),
    ],
)
def test_no_data_is_inconclusive_or_failed(values: dict[Any, Any], reason: str) -> None:
    metric = latency(samplesQuery='n{model_name="${model}"}[${interval}]', minSamples=10)
    values = {("n", "cand"): 100, ("n", "base"): 100, **values}
    [r] = measure(spec(metric), values)
    assert r.measurement.verdict == "Inconclusive"
    assert r.measurement.message.startswith("no data: ") and reason in r.measurement.message
    [r] = measure(spec({**metric, "onNoData": "Fail"}), values)
    assert r.measurement.verdict == "Failed"
    assert r.measurement.message.startswith("no data (onNoData: Fail): ")


def test_query_failure_is_an_error_naming_the_query() -> None:
    values = {("lat", "cand"): 0.3, ("lat", "base"): PrometheusError("HTTP 503 from Prometheus")}
    [r] = measure(spec(latency()), values)
    assert r.measurement.verdict == "Error"
    assert r.measurement.message == "query failed: baseline query: HTTP 503 from Prometheus"
    good = spec(latency())
    query = 'lat{model_name="${model}"}[${intervall}]'
    bad = good.model_copy(update={"metrics": [good.metrics[0].model_copy(update={"query": query})]})
    [r] = measure(bad, values)
    assert r.measurement.verdict == "Error" and "${intervall}" in r.measurement.message


# -- sequential metrics ---------------------------------------------------------------------
def votes(cand: tuple[float, float], base: tuple[float, float]) -> dict[tuple[str, str], Any]:
    return {
        ("good", "cand"): cand[0],
        ("votes", "cand"): cand[1],
        ("good", "base"): base[0],
        ("votes", "base"): base[1],
    }


def test_sequential_worse_equal_and_too_few() -> None:
    analysis = spec(feedback())
    fake = FakePrometheus(votes((700, 1000), (3200, 4000)))
    [r] = asyncio.run(measure_all(analysis, ctx(), fake))
    assert r.measurement.verdict == "Failed"
    assert r.sequential is not None and r.sequential.decision == "Worse"
    assert r.measurement.message.startswith("Worse: llr ")
    assert "candidate 0.7 (n=1000), baseline 0.8 (n=4000)" in r.measurement.message
    assert 'good{model_name="cand"}[96s]' in fake.queries  # cumulative over ${window}

    [r] = measure(analysis, votes((800, 1000), (3200, 4000)))
    assert r.measurement.verdict == "Successful"
    assert r.sequential is not None and r.sequential.decision == "NotWorse"

    [r] = measure(analysis, votes((30, 40), (3200, 4000)))
    assert r.measurement.verdict == "Inconclusive"
    assert r.sequential is not None and r.sequential.decision == "Undecided"
    assert r.sequential.log_likelihood_ratio is None
    assert "fewer than minSamples 50" in r.measurement.message

    [r] = measure(analysis, votes((75, 100), (320, 400)))
    assert r.measurement.verdict == "Inconclusive"
    assert r.measurement.message.startswith("Undecided: llr ") and "within" in r.measurement.message


def test_sequential_mean_of_scores() -> None:
    metric = {
        "name": "reward",
        "direction": "HigherIsBetter",
        "sequential": {
            "type": "Mean",
            "sumQuery": 's{model_name="${model}"}',
            "countQuery": 'c{model_name="${model}"}',
            "sumOfSquaresQuery": 'q{model_name="${model}"}',
            "minimumDetectableEffect": 0.1,
        },
    }
    # scores with mean 0.5 / 0.7 and variance ~0.04, 500 each
    values = {
        ("s", "cand"): 250.0,
        ("c", "cand"): 500,
        ("q", "cand"): 500 * (0.04 + 0.25),
        ("s", "base"): 350.0,
        ("c", "base"): 500,
        ("q", "base"): 500 * (0.04 + 0.49),
    }
    [r] = measure(spec(metric), values)
    assert r.sequential is not None and r.sequential.decision == "Worse"
    assert r.measurement.candidate == 0.5 and r.measurement.baseline == 0.7


def test_a_decided_test_stays_decided() -> None:
    analysis = spec(feedback())
    decided = SequentialState(
        decision="NotWorse", log_likelihood_ratio=-3.5, lower_bound=-2.9, upper_bound=2.9
    )
    previous = (MetricStatus(name="feedback", successful=3, sequential=decided),)
    later = votes((700, 1000), (3200, 4000))  # would be Worse now
    [r] = measure(analysis, later, previous=previous)
    assert r.measurement.verdict == "Successful" and r.sequential == decided
    assert "decided earlier" in r.measurement.message
    # fold keeps the decision even when the controller does not pass ``previous``
    [fresh] = measure(analysis, later)
    [status] = fold(analysis, list(previous), [fresh], new_step=False)
    assert status.sequential == decided
    assert (status.successful, status.failed, status.last_verdict) == (4, 0, "Successful")
    assert decide(analysis, [status], step=AnalysisStep(), step_intervals=1).abort_reason is None


# -- fold -----------------------------------------------------------------------------------
def result_of(analysis: AnalysisSpec, verdict: str) -> list[MetricResult]:
    table: dict[str, dict[tuple[str, str], Any]] = {
        "Successful": {("lat", "cand"): 0.25, ("lat", "base"): 0.25},
        "Failed": {("lat", "cand"): 0.9, ("lat", "base"): 0.25},
        "Inconclusive": {},
        "Error": {("lat", "cand"): PrometheusError("down"), ("lat", "base"): 0.25},
    }
    results: list[MetricResult] = measure(analysis, table[verdict])
    assert results[0].measurement.verdict == verdict
    return results


def test_fold_counts_streaks_and_errors() -> None:
    analysis = spec(latency())
    statuses: list[MetricStatus] = [MetricStatus(name="gone", failed=9)]
    trace = []
    for verdict, new_step in [
        ("Successful", True),
        ("Successful", False),
        ("Error", False),
        ("Error", False),
        ("Successful", False),
        ("Inconclusive", False),
        ("Successful", False),
        ("Successful", True),
        ("Failed", False),
    ]:
        statuses = fold(analysis, statuses, result_of(analysis, verdict), new_step=new_step)
        s = statuses[0]
        trace.append((s.step_successes, s.consecutive_errors))
    assert [s.name for s in statuses] == ["latency"]  # metrics no longer in the spec go
    assert trace == [(1, 0), (2, 0), (0, 1), (0, 2), (1, 0), (0, 0), (1, 0), (1, 0), (0, 0)]
    s = statuses[0]
    assert (s.successful, s.failed, s.inconclusive, s.errors) == (5, 1, 1, 2)
    assert s.last_verdict == "Failed" and s.sequential is None
    # a new step without a result for the metric still restarts the streak
    again = fold(
        analysis,
        fold(analysis, [], result_of(analysis, "Successful"), new_step=True),
        [],
        new_step=True,
    )
    assert again[0].step_successes == 0 and again[0].successful == 1


def test_fold_initialises_and_keeps_sequential_state_on_errors() -> None:
    analysis = spec(feedback())
    [first] = fold(analysis, [], [], new_step=True)
    assert first.sequential is not None and first.sequential.decision == "Undecided"
    assert first.sequential.upper_bound == pytest.approx(2.944, abs=1e-3)
    [undecided] = measure(analysis, votes((75, 100), (320, 400)))
    statuses = fold(analysis, [first], [undecided], new_step=False)
    llr = statuses[0].sequential.log_likelihood_ratio if statuses[0].sequential else None
    assert llr is not None
    [error] = measure(
        analysis, {**votes((75, 100), (320, 400)), ("votes", "cand"): PrometheusError("x")}
    )
    statuses = fold(analysis, statuses, [error], new_step=False)
    assert statuses[0].sequential is not None
    assert statuses[0].sequential.log_likelihood_ratio == llr
    assert statuses[0].consecutive_errors == 1


# -- decide ---------------------------------------------------------------------------------
def test_failure_limit_and_consecutive_errors_abort() -> None:
    analysis = spec(latency(failureLimit=1, consecutiveErrorLimit=2))
    ok = decide(analysis, [MetricStatus(name="latency", failed=1)], step=None, step_intervals=0)
    assert ok.abort_reason is None
    out = decide(analysis, [MetricStatus(name="latency", failed=2)], step=None, step_intervals=0)
    assert (out.abort_reason, out.abort_metric) == ("MetricFailed", "latency")
    assert out.abort_message == "metric latency: 2 failed measurements, failureLimit 1"
    out = decide(
        analysis,
        [MetricStatus(name="latency", consecutive_errors=3, errors=5)],
        step=None,
        step_intervals=0,
    )
    assert out.abort_reason == "QueryErrors" and "3 query errors in a row" in out.abort_message
    assert "consecutiveErrorLimit 2" in out.abort_message
    dry = spec(latency(dryRun=True))
    assert decide(dry, [MetricStatus(name="latency", failed=7)], step=None, step_intervals=0) == (
        decide(dry, [], step=None, step_intervals=0)
    )


def test_sequential_worse_aborts_with_its_reason() -> None:
    analysis = spec(feedback())
    [r] = measure(analysis, votes((700, 1000), (3200, 4000)))
    statuses = fold(analysis, [], [r], new_step=True)
    out = decide(analysis, statuses, step=AnalysisStep(), step_intervals=1)
    assert (out.abort_reason, out.abort_metric) == ("SequentialTestWorse", "feedback")
    assert "worse by 0.05 or more" in out.abort_message and "alpha 0.05" in out.abort_message
    assert not out.step_passed


def test_step_passes_only_on_successes_and_not_worse() -> None:
    analysis = spec(latency(), feedback())
    step = AnalysisStep(min_intervals=2, max_intervals=3)
    good = votes((800, 1000), (3200, 4000))
    values = {("lat", "cand"): 0.25, ("lat", "base"): 0.25, **good}
    statuses = fold(analysis, [], measure(analysis, values), new_step=True)
    assert decide(analysis, statuses, step=step, step_intervals=1) == decide(
        analysis, [], step=None, step_intervals=0
    )
    statuses = fold(analysis, statuses, measure(analysis, values), new_step=False)
    out = decide(analysis, statuses, step=step, step_intervals=2)
    assert out.step_passed and not out.inconclusive and out.abort_reason is None
    # the sequential metric undecided: the step waits, then is inconclusive
    undecided = {**values, **votes((75, 100), (320, 400))}
    statuses = fold(analysis, [], measure(analysis, undecided), new_step=True)
    statuses = fold(analysis, statuses, measure(analysis, undecided), new_step=False)
    assert not decide(analysis, statuses, step=step, step_intervals=2).step_passed
    out = decide(analysis, statuses, step=step, step_intervals=3)
    assert out.inconclusive and not out.step_passed


def test_no_data_never_passes_and_ends_inconclusive() -> None:
    analysis = spec(latency(), feedback(dryRun=True))
    step = AnalysisStep(min_intervals=1, max_intervals=5)
    statuses: list[MetricStatus] = []
    outcomes = []
    for interval in range(1, 6):
        results = measure(analysis, {})  # Prometheus has nothing for either model
        statuses = fold(analysis, statuses, results, new_step=interval == 1)
        outcomes.append(decide(analysis, statuses, step=step, step_intervals=interval))
    assert not any(o.step_passed or o.abort_reason for o in outcomes)
    assert [o.inconclusive for o in outcomes] == [False, False, False, False, True]
    assert statuses[0].inconclusive == 5 and statuses[0].last_verdict == "Inconclusive"


def test_only_dry_run_metrics_do_not_hold_a_step() -> None:
    analysis = spec(latency(dryRun=True))
    step = AnalysisStep(min_intervals=2)
    statuses = [MetricStatus(name="latency", failed=3, last_verdict="Failed")]
    assert not decide(analysis, statuses, step=step, step_intervals=1).step_passed
    assert decide(analysis, statuses, step=step, step_intervals=2).step_passed
