"""The ModelRollout resource: a canary of a tuned model beside the model it replaces.

A rollout moves traffic between two backends of a serving route step by step, measures
both models on Prometheus at every analysis interval, and promotes the candidate or rolls
it back. Three choices set it apart from the tools users compare it with:

- every threshold can be relative to the *baseline measured at the same time*, not only an
  absolute number (a slow hour slows both models; a regression is the difference);
- "no data" is its own verdict: too few samples are Inconclusive, which pauses an analysis
  step and never promotes (``onNoData: Fail`` makes it count as a failure instead);
- every measurement, with both values and the reason, is kept in ``status.measurements``
  and every failure is an Event, so "why was this rolled back?" has an answer.

Quality signals (share of positive feedback, reward-model scores) are decided by Wald's
sequential probability ratio test, so a rollout stops as soon as the evidence is enough
in either direction instead of after a fixed sample size.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import Field, StringConstraints

from kubetune.api.base import ApiModel, cel, validations
from kubetune.api.common import PATTERN_HELP, DNSLabel, DNSSubdomain
from kubetune.api.job import API_VERSION, ObjectMeta
from kubetune.api.status import Condition

KIND: Final = "ModelRollout"
PLURAL = "modelrollouts"
SINGULAR = "modelrollout"
SHORT_NAMES = ["mro"]
CATEGORIES = ["kubetune", "all"]

#: Annotations users (and the Argo CD actions) set to steer a rollout by hand; the
#: controller removes them once acted on.
PROMOTE_ANNOTATION: Final = "kubetune.io/promote"  # "step" (next step) or "full" (to 100 %)
ABORT_ANNOTATION: Final = "kubetune.io/abort"  # the value is the reason recorded
RETRY_ANNOTATION: Final = "kubetune.io/retry"  # restart a rolled-back rollout unchanged

#: Placeholders the controller substitutes in every PromQL query before running it.
QUERY_PLACEHOLDERS: Final = {
    "${model}": "the served model name of the variant measured (candidate or baseline)",
    "${namespace}": "the rollout's namespace",
    "${interval}": "the analysis interval as a PromQL duration, e.g. 30s",
    "${window}": "seconds since the candidate first received traffic in this rollout, as a "
    "PromQL duration (at least the interval), for cumulative counts",
}

ModelName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"),
]
#: A query template: any text whose ``${...}`` are known placeholders (RE2, no look-ahead:
#: a ``$`` is followed by a non-``{``, a known placeholder, or ends the text).
PROMQL_TEMPLATE_PATTERN = (
    r"^([^$]|\$[^{]|\$\{(" + "|".join(p[2:-1] for p in QUERY_PLACEHOLDERS) + r")\})*\$?$"
)
PATTERN_HELP[PROMQL_TEMPLATE_PATTERN] = "expected PromQL whose only placeholders are " + ", ".join(
    QUERY_PLACEHOLDERS
)
PromQL = Annotated[
    str, StringConstraints(min_length=1, max_length=4096, pattern=PROMQL_TEMPLATE_PATTERN)
]


# -- what is rolled out, and where ----------------------------------------------------------
class BackendRef(ApiModel):
    """A Service behind the route that serves one of the two models."""

    name: DNSLabel = Field(description="Name of the Service (in the rollout's namespace).")
    port: int = Field(ge=1, le=65535, description="Port of the Service.")


class BaselineModel(ApiModel):
    """The model now serving the traffic."""

    model_name: ModelName = Field(
        description="Its served model name (vLLM's --served-model-name; the model_name label "
        "of its metrics), substituted for ${model} when the baseline is measured."
    )
    backend_ref: BackendRef = Field(description="The route backend serving it.")
    fine_tune_job: DNSSubdomain | None = Field(
        default=None,
        description="The FineTuneJob (same namespace) that produced it, if any: lineage only.",
    )


class CandidateModel(ApiModel):
    """The newly tuned model being rolled out."""

    model_name: ModelName = Field(
        description="Its served model name (the model_name label of its metrics), "
        "substituted for ${model} when the candidate is measured."
    )
    backend_ref: BackendRef = Field(description="The route backend serving it.")
    fine_tune_job: DNSSubdomain = Field(
        description="The FineTuneJob (same namespace) that produced it. The rollout starts only "
        "once that job has Succeeded with condition Promotable=True (its evaluation gates "
        "passed) and refuses a model marked not promotable, with the job's reason."
    )


class ServingTarget(ApiModel):
    """The routing object whose weights the rollout sets."""

    kind: Literal["HTTPRoute"] = Field(
        default="HTTPRoute",
        description="HTTPRoute: a Gateway API HTTPRoute (gateway.networking.k8s.io/v1) whose "
        "rule holds both backends; the rollout sets their backendRefs[].weight (the candidate's "
        "backendRef is added to the rule when missing).",
    )
    name: DNSSubdomain = Field(description="Name of the route (in the rollout's namespace).")
    rule_index: int = Field(
        default=0, ge=0, le=15, description="Index of the rule in spec.rules that holds both."
    )


# -- steps ----------------------------------------------------------------------------------
class PauseStep(ApiModel):
    """Hold the current weights."""

    duration_seconds: int | None = Field(
        default=None,
        ge=1,
        le=604800,
        description="How long to hold; absent: until promoted by hand (annotation "
        "kubetune.io/promote or the Argo CD action). Analysis keeps running while paused.",
    )


class AnalysisStep(ApiModel):
    """Wait for the analysis to pass at the current weights."""

    min_intervals: int = Field(
        default=1,
        ge=1,
        le=100,
        description="Measurements every threshold metric needs in this step, the latest this "
        "many all Successful, before the step passes. Sequential metrics pass once their test "
        "decides the candidate is not worse.",
    )
    max_intervals: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Analysis intervals after which a step that has not passed is "
        "Inconclusive: the rollout pauses (phase Paused, reason AnalysisInconclusive) and "
        "never promotes by itself.",
    )


class RolloutStep(ApiModel):
    """One step: exactly one of setWeight, pause, analysis."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "(has(self.setWeight) ? 1 : 0) + (has(self.pause) ? 1 : 0) + "
                "(has(self.analysis) ? 1 : 0) == 1",
                "a step has exactly one of setWeight, pause or analysis",
            )
        )
    }

    set_weight: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Percent of the route's traffic sent to the candidate (the baseline "
        "gets the rest).",
    )
    pause: PauseStep | None = Field(default=None, description="Hold the current weights.")
    analysis: AnalysisStep | None = Field(
        default=None, description="Wait for the analysis to pass at the current weights."
    )


# -- analysis -------------------------------------------------------------------------------
Direction = Literal["LowerIsBetter", "HigherIsBetter"]
OnNoData = Literal["Inconclusive", "Fail"]


class BaselineComparison(ApiModel):
    """How much worse than the baseline's value (measured at the same time) is tolerated."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "has(self.maxRelativeDegradation) || has(self.maxAbsoluteDegradation)",
                "set maxRelativeDegradation, maxAbsoluteDegradation or both",
            )
        )
    }

    max_relative_degradation: float | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Worse than the baseline by at most this fraction of the baseline's "
        "value (0.2: 20 %).",
    )
    max_absolute_degradation: float | None = Field(
        default=None,
        ge=0,
        description="Worse than the baseline by at most this much, in the metric's unit. With "
        "both set, the larger allowance applies (so a near-zero baseline does not make any "
        "difference a failure).",
    )


class SequentialTest(ApiModel):
    """Wald's SPRT on candidate minus baseline (normal approximation on cumulative counts).

    H0: the candidate is as good as the baseline; H1: it is worse by minimumDetectableEffect.
    Each interval adds evidence; the test stops at the first interval where it is enough
    either way: Worse rolls back, NotWorse passes the metric.
    """

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.type == 'Proportion' ? (has(self.successQuery) && has(self.totalQuery) "
                "&& !has(self.sumQuery)) : (has(self.sumQuery) && has(self.countQuery) && "
                "has(self.sumOfSquaresQuery) && !has(self.successQuery))",
                "type Proportion needs successQuery and totalQuery; type Mean needs sumQuery, "
                "countQuery and sumOfSquaresQuery",
            ),
            cel("self.alpha + self.beta < 1.0", "alpha + beta must be below 1"),
        )
    }

    type: Literal["Proportion", "Mean"] = Field(
        description="Proportion: a share of successes (e.g. positive feedback); Mean: the mean "
        "of a score (e.g. reward-model scores of sampled responses)."
    )
    success_query: PromQL | None = Field(
        default=None, description="Proportion: successes since ${window}, e.g. positive votes."
    )
    total_query: PromQL | None = Field(
        default=None, description="Proportion: trials since ${window}, e.g. all votes."
    )
    sum_query: PromQL | None = Field(default=None, description="Mean: sum of the scores.")
    count_query: PromQL | None = Field(default=None, description="Mean: number of scores.")
    sum_of_squares_query: PromQL | None = Field(
        default=None, description="Mean: sum of the squared scores (for the variance)."
    )
    minimum_detectable_effect: float = Field(
        gt=0,
        description="The degradation, in the metric's unit (0.05: five points of share), the "
        "test must detect: H1 says the candidate is worse by this much.",
    )
    alpha: float = Field(
        default=0.05,
        gt=0,
        lt=0.5,
        description="Probability of rolling back a candidate as good as the baseline.",
    )
    beta: float = Field(
        default=0.05,
        gt=0,
        lt=0.5,
        description="Probability of passing a candidate worse by minimumDetectableEffect.",
    )


class AnalysisMetric(ApiModel):
    """One signal measured on both models at every interval."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "has(self.query) != has(self.sequential)",
                "a metric has either query (a threshold metric) or sequential",
            ),
            cel(
                "!has(self.query) || has(self.threshold) || has(self.baseline)",
                "a query metric needs threshold, baseline or both",
            ),
            cel(
                "!has(self.sequential) || (!has(self.threshold) && !has(self.baseline))",
                "threshold and baseline apply only to query metrics",
            ),
        )
    }

    name: DNSLabel = Field(description="Name of the metric (unique in the rollout).")
    direction: Direction = Field(
        description="LowerIsBetter (latency, errors) or HigherIsBetter (feedback, reward)."
    )
    query: PromQL | None = Field(
        default=None,
        description="PromQL returning one number, run for each model with ${model} set to its "
        "model name (placeholders: ${model}, ${namespace}, ${interval}, ${window}).",
    )
    threshold: float | None = Field(
        default=None,
        description="Absolute limit for the candidate's value: a maximum when LowerIsBetter, a "
        "minimum when HigherIsBetter.",
    )
    baseline: BaselineComparison | None = Field(
        default=None, description="Limit relative to the baseline's value at the same time."
    )
    sequential: SequentialTest | None = Field(
        default=None, description="A sequential test instead of a query and thresholds."
    )
    samples_query: PromQL | None = Field(
        default=None,
        description="PromQL counting the samples behind one measurement (e.g. requests in "
        "${interval}), run for each model; fewer than minSamples for either is no data.",
    )
    min_samples: int = Field(
        default=0,
        ge=0,
        description="Samples each model needs for a measurement to count (threshold metrics: "
        "per interval from samplesQuery; sequential metrics: trials per model in total).",
    )
    on_no_data: OnNoData = Field(
        default="Inconclusive",
        description="An empty result, NaN or too few samples: Inconclusive (never passes, "
        "never fails) or Fail (counts as a failed measurement).",
    )
    failure_limit: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Failed measurements tolerated: one more aborts the rollout.",
    )
    consecutive_error_limit: int = Field(
        default=4,
        ge=0,
        le=100,
        description="Query errors in a row tolerated (Prometheus down or a bad query): one "
        "more aborts the rollout.",
    )
    dry_run: bool = Field(
        default=False,
        description="Measure and record only: never fails, pauses or passes the rollout.",
    )


class PrometheusSource(ApiModel):
    """Where the analysis queries run."""

    address: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^https?://\S+$",
        description="Base URL of the Prometheus HTTP API, e.g. http://prometheus.monitoring:9090.",
    )


class AnalysisSpec(ApiModel):
    """The signals that decide the rollout, measured on both models at every interval."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.metrics.all(m, self.metrics.filter(n, n.name == m.name).size() == 1)",
                "metric names must be unique",
                field_path=".metrics",
            )
        )
    }

    interval_seconds: int = Field(
        default=30, ge=5, le=3600, description="Seconds between measurements."
    )
    prometheus: PrometheusSource | None = Field(
        default=None, description="Prometheus to query; default: the operator's setting."
    )
    metrics: list[AnalysisMetric] = Field(
        min_length=1, max_length=16, description="The signals, all measured every interval."
    )


_STEP_RULES = [
    cel(
        "!self.steps.exists(s, has(s.analysis)) || has(self.analysis)",
        "analysis steps need spec.analysis (the metrics they wait for)",
        field_path=".steps",
    ),
    cel(
        "self.baseline.backendRef.name != self.candidate.backendRef.name",
        "baseline and candidate must be different backends",
        field_path=".candidate.backendRef.name",
    ),
    cel(
        "self.baseline.modelName != self.candidate.modelName",
        "baseline and candidate need different model names (the metrics tell them apart by it)",
        field_path=".candidate.modelName",
    ),
    cel(
        "self.target == oldSelf.target",
        "target cannot change after creation; create a new ModelRollout instead",
        field_path=".target",
    ),
]


class ModelRolloutSpec(ApiModel):
    """Roll a tuned model out beside the model it replaces, step by step."""

    model_config = ApiModel.model_config | {"json_schema_extra": validations(*_STEP_RULES)}

    target: ServingTarget = Field(description="The route whose weights the rollout sets.")
    baseline: BaselineModel = Field(description="The model now serving.")
    candidate: CandidateModel = Field(description="The tuned model rolled out.")
    steps: list[RolloutStep] = Field(
        min_length=1,
        max_length=32,
        description="Done in order; after the last step the candidate is promoted (100 % of "
        "the traffic). A change of candidate restarts the rollout from the first step.",
    )
    analysis: AnalysisSpec | None = Field(
        default=None,
        description="Measured every interval while the candidate receives traffic: a metric "
        "past its failure limit aborts the rollout at any step, not only at analysis steps.",
    )
    progress_deadline_seconds: int = Field(
        default=1800,
        ge=30,
        le=604800,
        description="Seconds a setWeight or analysis step may take (e.g. a route that never "
        "shows the weights): past it the rollout is aborted with reason "
        "ProgressDeadlineExceeded. Pauses and Inconclusive waits do not count.",
    )


# -- status ---------------------------------------------------------------------------------
RolloutPhase = Literal["Pending", "Progressing", "Paused", "Promoted", "RolledBack", "Failed"]
ROLLOUT_PHASES: tuple[str, ...] = (
    "Pending",
    "Progressing",
    "Paused",
    "Promoted",
    "RolledBack",
    "Failed",
)
Verdict = Literal["Successful", "Failed", "Inconclusive", "Error"]
SequentialDecision = Literal["Undecided", "NotWorse", "Worse"]

CONDITION_PROGRESSING = "Progressing"
CONDITION_PROMOTED = "Promoted"
CONDITION_ROLLED_BACK = "RolledBack"
CONDITION_CANDIDATE_READY = "CandidateReady"


class Measurement(ApiModel):
    """One measurement of one metric on both models."""

    metric: str = Field(max_length=63, description="Name of the metric.")
    time: datetime = Field(description="When it was taken.")
    step: int = Field(ge=0, le=64, description="Index of the step it was taken in.")
    weight: int = Field(ge=0, le=100, description="The candidate's weight at the time.")
    verdict: Verdict = Field(description="Successful, Failed, Inconclusive or Error.")
    candidate: float | None = Field(default=None, description="The candidate's value.")
    baseline: float | None = Field(default=None, description="The baseline's value.")
    candidate_samples: float | None = Field(
        default=None, description="Samples behind the candidate's value."
    )
    baseline_samples: float | None = Field(
        default=None, description="Samples behind the baseline's value."
    )
    limit: float | None = Field(
        default=None, description="The limit the candidate's value was held to, when known."
    )
    message: str = Field(default="", max_length=1024, description="Why this verdict.")


class SequentialState(ApiModel):
    """Where a sequential test stands."""

    decision: SequentialDecision = Field(description="Undecided, NotWorse or Worse.")
    log_likelihood_ratio: float | None = Field(
        default=None, description="log LR of H1 (worse) against H0 (as good)."
    )
    lower_bound: float = Field(description="log(beta / (1 - alpha)): at or below, NotWorse.")
    upper_bound: float = Field(description="log((1 - beta) / alpha): at or above, Worse.")


class MetricStatus(ApiModel):
    """Running totals of one metric over the rollout."""

    name: str = Field(max_length=63, description="Name of the metric.")
    successful: int = Field(default=0, ge=0, description="Successful measurements.")
    failed: int = Field(default=0, ge=0, description="Failed measurements.")
    inconclusive: int = Field(default=0, ge=0, description="Inconclusive measurements.")
    errors: int = Field(default=0, ge=0, description="Query errors.")
    consecutive_errors: int = Field(default=0, ge=0, description="Query errors in a row.")
    step_successes: int = Field(
        default=0, ge=0, description="Successful measurements in a row in the current step."
    )
    last_verdict: Verdict | None = Field(default=None, description="The latest verdict.")
    sequential: SequentialState | None = Field(
        default=None, description="Sequential metrics: the test's state."
    )


class AbortRecord(ApiModel):
    """Why a rollout was rolled back."""

    reason: str = Field(
        max_length=128,
        description="CamelCase: MetricFailed, SequentialTestWorse, QueryErrors, "
        "ProgressDeadlineExceeded, AbortedByUser, CandidateNotPromotable.",
    )
    message: str = Field(max_length=4096, description="Human-readable details.")
    metric: str | None = Field(default=None, max_length=63, description="The metric, if one.")
    time: datetime = Field(description="When the rollout was aborted.")
    step: int = Field(ge=0, le=64, description="The step it was aborted in.")


class ModelRolloutStatus(ApiModel):
    """Observed state of a ModelRollout, written only by the operator."""

    phase: RolloutPhase = Field(default="Pending", description="High-level phase.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="Progressing, Promoted, RolledBack, CandidateReady.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation last acted on."
    )
    candidate_hash: str | None = Field(
        default=None,
        max_length=64,
        description="Hash of the candidate (and steps) this status is about: a rolled-back "
        "candidate is not retried until this changes (or kubetune.io/retry is set).",
    )
    current_step: int = Field(default=0, ge=0, le=64, description="Index of the current step.")
    step_started_at: datetime | None = Field(
        default=None, description="When the current step began."
    )
    candidate_weight: int = Field(
        default=0, ge=0, le=100, description="The candidate's weight last set on the route."
    )
    traffic_started_at: datetime | None = Field(
        default=None,
        description="When the candidate first received traffic (start of ${window}).",
    )
    last_analysis_at: datetime | None = Field(
        default=None, description="When the metrics were last measured."
    )
    step_intervals: int = Field(
        default=0, ge=0, description="Analysis intervals measured in the current step."
    )
    pause_reason: str | None = Field(
        default=None,
        max_length=128,
        description="Why the rollout is Paused: PauseStep, AnalysisInconclusive.",
    )
    metrics: list[MetricStatus] = Field(
        default_factory=list, max_length=16, description="Running totals per metric."
    )
    measurements: list[Measurement] = Field(
        default_factory=list,
        max_length=500,
        description="Every measurement, oldest first; beyond 500 the oldest are dropped and "
        "counted in measurementsDropped (Events keep every failure).",
    )
    measurements_dropped: int = Field(
        default=0, ge=0, description="Oldest measurements dropped from the list."
    )
    abort: AbortRecord | None = Field(default=None, description="Why it was rolled back.")
    promoted_at: datetime | None = Field(default=None, description="When it was promoted.")
    message: str | None = Field(
        default=None, max_length=1024, description="The latest state in words."
    )


class ModelRollout(ApiModel):
    """A canary rollout of a tuned model, promoted or rolled back from Prometheus metrics."""

    api_version: Literal["kubetune.io/v1alpha1"] = Field(
        default=API_VERSION, description="APIVersion of this object."
    )
    kind: Literal["ModelRollout"] = Field(default=KIND, description="Kind of this object.")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard metadata.")
    spec: ModelRolloutSpec = Field(description="Desired rollout.")
    status: ModelRolloutStatus | None = Field(default=None, description="Observed state.")


def rollout_step_summary(step: int, steps: int) -> str:
    """``2/5``: the printer column's step text."""
    return f"{min(step + 1, steps)}/{steps}"


def as_manifest(rollout: ModelRollout) -> dict[str, Any]:
    """The object as the API server would store it (camelCase, no nulls)."""
    return rollout.model_dump(mode="json", by_alias=True, exclude_none=True)
