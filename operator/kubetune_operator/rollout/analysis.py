"""Analysis of a ModelRollout: measure every metric on both models, fold the measurements
into running totals, and decide what the rollout does next.

The controller calls, once per analysis interval while the candidate has traffic
(weight > 0) or an analysis step is active::

    results = await measure_all(spec.analysis, ctx, prometheus)
    statuses = fold(spec.analysis, status.metrics, results, new_step=...)
    outcome = decide(spec.analysis, statuses, step=<AnalysisStep or None>,
                     step_intervals=<intervals measured in this step>)

The three steps are separate so each is a plain function of its inputs: only
:func:`measure_all` talks to Prometheus; :func:`fold` and :func:`decide` are pure and
replayable from ``status`` alone. The rules (every verdict says why, with both values and
the limit; no data never passes; a decided sequential test stays decided) are described
on the API fields in :mod:`kubetune.api.rollout`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar, cast

from kubetune.api.rollout import (
    AnalysisMetric,
    AnalysisSpec,
    AnalysisStep,
    Measurement,
    MetricStatus,
    SequentialDecision,
    SequentialState,
    SequentialTest,
    Verdict,
)
from kubetune.api.rollout_queries import QueryTemplateError, render
from kubetune.stats import sprt
from kubetune_operator.rollout.prometheus import PrometheusError as PrometheusError

MAX_MESSAGE = 1024
T = TypeVar("T")

ABORT_METRIC_FAILED = "MetricFailed"
ABORT_QUERY_ERRORS = "QueryErrors"
ABORT_SEQUENTIAL_WORSE = "SequentialTestWorse"


class PrometheusClient(Protocol):
    async def query(self, promql: str, at: datetime | None = None) -> float | None:
        """The instant query's single value; None for an empty result; raises
        PrometheusError on failure."""
        ...


@dataclass(frozen=True)
class AnalysisContext:
    namespace: str
    candidate_model: str
    baseline_model: str
    interval_seconds: int
    window_seconds: float  # since status.trafficStartedAt (>= interval)
    step: int
    weight: int
    now: datetime
    #: status.metrics before this interval: a sequential test decided there has stopped,
    #: and its measurements keep that decision (fold keeps it in any case).
    previous: tuple[MetricStatus, ...] = ()


@dataclass(frozen=True)
class MetricResult:
    measurement: Measurement
    sequential: SequentialState | None  # only for sequential metrics


@dataclass(frozen=True)
class AnalysisOutcome:
    """What the rollout does after this interval.

    abort_reason set: roll back now (MetricFailed, SequentialTestWorse, QueryErrors).
    step_passed: the current analysis step (if any) passed.
    inconclusive: the current analysis step reached maxIntervals without passing.
    """

    abort_reason: str | None = None
    abort_metric: str | None = None
    abort_message: str = ""
    step_passed: bool = False
    inconclusive: bool = False


# -- measuring ------------------------------------------------------------------------------
class _QueryFailed(Exception):
    """A query of one metric failed; the message says which query and why."""


async def _all(*aws: Awaitable[T]) -> list[T]:
    """Like ``gather``, but every query finishes (none is left running against the
    client) before the first failure is raised."""
    done = await asyncio.gather(*aws, return_exceptions=True)
    for item in done:
        if isinstance(item, BaseException):
            raise item
    return cast(list[T], done)


def _fmt(value: float | None) -> str:
    return "no data" if value is None else f"{value:.6g}"


def _clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


class _Runner:
    """Runs one metric's queries for both models with the placeholders of this interval."""

    def __init__(self, ctx: AnalysisContext, prometheus: PrometheusClient) -> None:
        self.ctx = ctx
        self.prometheus = prometheus

    async def one(self, label: str, text: str, model: str) -> float | None:
        ctx = self.ctx
        try:
            promql = render(
                text,
                model=model,
                namespace=ctx.namespace,
                interval_seconds=ctx.interval_seconds,
                window_seconds=ctx.window_seconds,
            )
            return await self.prometheus.query(promql, ctx.now)
        except (PrometheusError, QueryTemplateError, OSError, TimeoutError) as exc:
            raise _QueryFailed(f"{label}: {exc}") from exc

    async def both(self, name: str, text: str | None) -> tuple[float | None, float | None]:
        """(candidate, baseline) values of one query; (None, None) when it is not set."""
        if text is None:
            return None, None
        candidate, baseline = await _all(
            self.one(f"candidate {name}", text, self.ctx.candidate_model),
            self.one(f"baseline {name}", text, self.ctx.baseline_model),
        )
        return candidate, baseline


def _measurement(
    metric: AnalysisMetric,
    ctx: AnalysisContext,
    verdict: Verdict,
    message: str,
    **values: float | None,
) -> Measurement:
    return Measurement(
        metric=metric.name,
        time=ctx.now,
        step=ctx.step,
        weight=ctx.weight,
        verdict=verdict,
        message=_clip(message),
        **values,
    )


def _effective_limit(metric: AnalysisMetric, baseline: float | None) -> tuple[float | None, str]:
    """(limit, how it was set): the tighter of threshold and baseline ± allowance."""
    lower_is_better = metric.direction == "LowerIsBetter"
    limits: list[tuple[float, str]] = []
    if metric.threshold is not None:
        limits.append((metric.threshold, "threshold"))
    comparison = metric.baseline
    if comparison is not None and baseline is not None:
        relative = (comparison.max_relative_degradation or 0.0) * abs(baseline)
        absolute = comparison.max_absolute_degradation or 0.0
        if comparison.max_relative_degradation is not None and relative >= absolute:
            how = f"{comparison.max_relative_degradation * 100:g} %"
        else:
            how = f"{absolute:g}"
        allowance = max(relative, absolute)
        sign = "+" if lower_is_better else "-"
        bound = baseline + allowance if lower_is_better else baseline - allowance
        limits.append((bound, f"baseline {_fmt(baseline)} {sign} {how}"))
    if not limits:
        return None, ""
    return (min if lower_is_better else max)(limits, key=lambda item: item[0])


def _no_data(metric: AnalysisMetric, reason: str) -> tuple[Verdict, str]:
    if metric.on_no_data == "Fail":
        return "Failed", f"no data (onNoData: Fail): {reason}"
    return "Inconclusive", f"no data: {reason}"


async def _measure_threshold(
    metric: AnalysisMetric, ctx: AnalysisContext, runner: _Runner
) -> MetricResult:
    assert metric.query is not None
    try:
        (candidate, baseline), (c_samples, b_samples) = await _all(
            runner.both("query", metric.query), runner.both("samplesQuery", metric.samples_query)
        )
    except _QueryFailed as exc:
        return MetricResult(_measurement(metric, ctx, "Error", f"query failed: {exc}"), None)
    if metric.samples_query is not None:  # an empty count is no samples
        c_samples, b_samples = c_samples or 0.0, b_samples or 0.0
    limit, how = _effective_limit(metric, baseline)
    values: dict[str, float | None] = {
        "candidate": candidate,
        "baseline": baseline,
        "candidate_samples": c_samples,
        "baseline_samples": b_samples,
        "limit": limit,
    }
    both = f"candidate {_fmt(candidate)}, baseline {_fmt(baseline)}"
    reason = ""
    if candidate is None:
        reason = f"the candidate's query returned no value ({both})"
    elif metric.baseline is not None and baseline is None:
        reason = f"the baseline's query returned no value, needed for the comparison ({both})"
    elif (
        metric.samples_query is not None
        and c_samples is not None
        and b_samples is not None
        and min(c_samples, b_samples) < metric.min_samples
    ):
        reason = (
            f"samples candidate {_fmt(c_samples)}, baseline {_fmt(b_samples)}; "
            f"minSamples {metric.min_samples} ({both})"
        )
    if reason or candidate is None or limit is None:
        verdict, message = _no_data(metric, reason or f"no limit to compare with ({both})")
        return MetricResult(_measurement(metric, ctx, verdict, message, **values), None)
    lower_is_better = metric.direction == "LowerIsBetter"
    worse = candidate > limit if lower_is_better else candidate < limit
    op = {(True, True): ">", (True, False): "<=", (False, True): "<", (False, False): ">="}[
        (lower_is_better, worse)
    ]
    detail = how if how.startswith("baseline") else f"{how}; baseline {_fmt(baseline)}"
    message = f"candidate {_fmt(candidate)} {op} limit {_fmt(limit)} ({detail})"
    outcome: Verdict = "Failed" if worse else "Successful"
    return MetricResult(_measurement(metric, ctx, outcome, message, **values), None)


def _state(result: sprt.SprtResult) -> SequentialState:
    return SequentialState(
        decision=result.decision,
        log_likelihood_ratio=result.llr,
        lower_bound=result.lower,
        upper_bound=result.upper,
    )


_DECISION_VERDICT: dict[SequentialDecision, Verdict] = {
    "Worse": "Failed",
    "NotWorse": "Successful",
    "Undecided": "Inconclusive",
}


async def _measure_sequential(
    metric: AnalysisMetric,
    ctx: AnalysisContext,
    runner: _Runner,
    decided: SequentialState | None,
) -> MetricResult:
    test = metric.sequential
    assert test is not None
    lower, upper = sprt.bounds(test.alpha, test.beta)
    try:
        if test.type == "Proportion":
            (cx, bx), (cn, bn) = await _all(
                runner.both("successQuery", test.success_query),
                runner.both("totalQuery", test.total_query),
            )
            candidate = sprt.proportion_moments(cx or 0.0, cn or 0.0)
            baseline = sprt.proportion_moments(bx or 0.0, bn or 0.0)
            floor = 0.0
        else:
            (cs, bs), (cn, bn), (cq, bq) = await _all(
                runner.both("sumQuery", test.sum_query),
                runner.both("countQuery", test.count_query),
                runner.both("sumOfSquaresQuery", test.sum_of_squares_query),
            )
            candidate = sprt.mean_moments(cs or 0.0, cn or 0.0, cq or 0.0)
            baseline = sprt.mean_moments(bs or 0.0, bn or 0.0, bq or 0.0)
            floor = sprt.MEAN_VARIANCE_FLOOR * test.minimum_detectable_effect**2
    except _QueryFailed as exc:
        message = f"query failed: {exc}"
        return MetricResult(_measurement(metric, ctx, "Error", message), None)
    result = sprt.sprt(
        candidate,
        baseline,
        mde=test.minimum_detectable_effect,
        alpha=test.alpha,
        beta=test.beta,
        higher_is_better=metric.direction == "HigherIsBetter",
        min_samples=metric.min_samples,
        variance_floor=floor,
        proportion=test.type == "Proportion",
    )
    values: dict[str, float | None] = {
        "candidate": candidate.mean if math.isfinite(candidate.mean) else None,
        "baseline": baseline.mean if math.isfinite(baseline.mean) else None,
        "candidate_samples": candidate.n,
        "baseline_samples": baseline.n,
    }
    both = (
        f"candidate {_fmt(values['candidate'])} (n={candidate.n:g}), "
        f"baseline {_fmt(values['baseline'])} (n={baseline.n:g}), "
        f"MDE {test.minimum_detectable_effect:g}"
    )
    if decided is not None:  # the test has stopped: record the values, keep the decision
        now = "n/a" if result.llr is None else f"{result.llr:.3g}"
        message = f"{decided.decision} (decided earlier; test stopped, llr now {now}): {both}"
        verdict = _DECISION_VERDICT[decided.decision]
        return MetricResult(_measurement(metric, ctx, verdict, message, **values), decided)
    if result.llr is None:
        reason = f"fewer than minSamples {metric.min_samples} trials for a model ({both})"
        message = f"Undecided, no data: {reason}"
        state = SequentialState(decision="Undecided", lower_bound=lower, upper_bound=upper)
        return MetricResult(_measurement(metric, ctx, "Inconclusive", message, **values), state)
    if result.decision == "Worse":
        where = f"llr {result.llr:.3g} >= {upper:.3g}"
    elif result.decision == "NotWorse":
        where = f"llr {result.llr:.3g} <= {lower:.3g}"
    else:
        where = f"llr {result.llr:.3g} within ({lower:.3g}, {upper:.3g})"
    message = f"{result.decision}: {where}; {both}"
    verdict = _DECISION_VERDICT[result.decision]
    return MetricResult(_measurement(metric, ctx, verdict, message, **values), _state(result))


def _decided(previous: Sequence[MetricStatus]) -> dict[str, SequentialState]:
    return {
        s.name: s.sequential
        for s in previous
        if s.sequential is not None and s.sequential.decision != "Undecided"
    }


async def measure_all(
    spec: AnalysisSpec, ctx: AnalysisContext, prometheus: PrometheusClient
) -> list[MetricResult]:
    """One measurement of every metric (in spec order), all queries concurrently.

    Never raises for a failing query: that metric's measurement is an Error.
    """
    runner = _Runner(ctx, prometheus)
    decided = _decided(ctx.previous)
    jobs = [
        _measure_sequential(metric, ctx, runner, decided.get(metric.name))
        if metric.sequential is not None
        else _measure_threshold(metric, ctx, runner)
        for metric in spec.metrics
    ]
    return list(await asyncio.gather(*jobs))


# -- folding --------------------------------------------------------------------------------
def _initial_state(test: SequentialTest) -> SequentialState:
    lower, upper = sprt.bounds(test.alpha, test.beta)
    return SequentialState(decision="Undecided", lower_bound=lower, upper_bound=upper)


def _fold_one(
    metric: AnalysisMetric, status: MetricStatus, result: MetricResult | None, new_step: bool
) -> MetricStatus:
    update: dict[str, object] = {}
    if new_step:
        update["step_successes"] = 0
    kept = status.sequential
    if metric.sequential is not None and kept is None:
        kept = _initial_state(metric.sequential)
    stopped = kept is not None and kept.decision != "Undecided"
    if result is not None:
        verdict = result.measurement.verdict
        if stopped and verdict != "Error":
            assert kept is not None
            verdict = _DECISION_VERDICT[kept.decision]  # the decision stands
        elif metric.sequential is not None and result.sequential is not None:
            kept = result.sequential
        counter = {
            "Successful": "successful",
            "Failed": "failed",
            "Inconclusive": "inconclusive",
            "Error": "errors",
        }[verdict]
        update[counter] = getattr(status, counter) + 1
        update["consecutive_errors"] = status.consecutive_errors + 1 if verdict == "Error" else 0
        streak = 0 if new_step else status.step_successes
        update["step_successes"] = streak + 1 if verdict == "Successful" else 0
        update["last_verdict"] = verdict
    update["sequential"] = kept if metric.sequential is not None else None
    return status.model_copy(update=update)


def fold(
    spec: AnalysisSpec,
    previous: list[MetricStatus],
    results: list[MetricResult],
    *,
    new_step: bool,
) -> list[MetricStatus]:
    """The running totals after this interval's results, one per metric in spec order.

    ``new_step``: these results are the first of a new step, so the streak of successes
    starts again. A sequential test's decision, once made, is kept: later measurements
    count with the decided verdict (query errors still count as errors).
    """
    by_name = {s.name: s for s in previous}
    by_metric: Mapping[str, MetricResult] = {r.measurement.metric: r for r in results}
    return [
        _fold_one(
            metric,
            by_name.get(metric.name) or MetricStatus(name=metric.name),
            by_metric.get(metric.name),
            new_step,
        )
        for metric in spec.metrics
    ]


# -- deciding -------------------------------------------------------------------------------
def _abort(metric: AnalysisMetric, status: MetricStatus) -> tuple[str, str] | None:
    """(reason, message) when this metric aborts the rollout."""
    seq = status.sequential
    if metric.sequential is not None and seq is not None and seq.decision == "Worse":
        llr = "n/a" if seq.log_likelihood_ratio is None else f"{seq.log_likelihood_ratio:.3g}"
        return ABORT_SEQUENTIAL_WORSE, (
            f"metric {metric.name}: the sequential test decided the candidate is worse by "
            f"{metric.sequential.minimum_detectable_effect:g} or more (llr {llr} >= "
            f"{seq.upper_bound:.3g}, alpha {metric.sequential.alpha:g})"
        )
    if status.failed > metric.failure_limit:
        return ABORT_METRIC_FAILED, (
            f"metric {metric.name}: {status.failed} failed measurements, failureLimit "
            f"{metric.failure_limit}"
        )
    if status.consecutive_errors > metric.consecutive_error_limit:
        return ABORT_QUERY_ERRORS, (
            f"metric {metric.name}: {status.consecutive_errors} query errors in a row, "
            f"consecutiveErrorLimit {metric.consecutive_error_limit}"
        )
    return None


def _passed(metric: AnalysisMetric, status: MetricStatus, step: AnalysisStep) -> bool:
    if metric.sequential is not None:
        return status.sequential is not None and status.sequential.decision == "NotWorse"
    return status.step_successes >= step.min_intervals


def decide(
    spec: AnalysisSpec,
    statuses: list[MetricStatus],
    *,
    step: AnalysisStep | None,
    step_intervals: int,
) -> AnalysisOutcome:
    """Abort, pass the analysis step, call it inconclusive, or carry on.

    Dry-run metrics never abort or hold a step. A step with only dry-run metrics passes
    after ``minIntervals`` intervals (nothing can hold it; they are measured and recorded).
    """
    by_name = {s.name: s for s in statuses}
    live = [
        (metric, by_name.get(metric.name) or MetricStatus(name=metric.name))
        for metric in spec.metrics
        if not metric.dry_run
    ]
    for metric, status in live:
        abort = _abort(metric, status)
        if abort is not None:
            reason, message = abort
            return AnalysisOutcome(
                abort_reason=reason, abort_metric=metric.name, abort_message=message
            )
    if step is None:
        return AnalysisOutcome()
    if live:
        passed = all(_passed(metric, status, step) for metric, status in live)
    else:
        passed = step_intervals >= step.min_intervals
    return AnalysisOutcome(
        step_passed=passed, inconclusive=not passed and step_intervals >= step.max_intervals
    )
