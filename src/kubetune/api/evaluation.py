"""Evaluation gates: ``spec.evaluation`` (what to measure and the bar to clear) and
``status.evaluation`` (what was measured, and whether the model may be promoted).

Metric names: ``<set>/<metric>`` for generation metrics (per-example scores, higher is
better: 0/1 for exactMatch, contains, regex and validJson; the reward model's score for
rewardModel) and ``heldOut/loss``, ``heldOut/perplexity`` for the dataset's evaluation
split (lower is better). See docs/evaluation.md for the statistics and the gate rule.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator

from kubetune.api.base import ApiModel, cel, validations
from kubetune.api.common import LOCATION_HELP, DNSLabel, Location

HELD_OUT = "heldOut"
HELD_OUT_METRICS: tuple[str, ...] = (f"{HELD_OUT}/loss", f"{HELD_OUT}/perplexity")
MAX_SETS = 8
MAX_METRICS_PER_SET = 8
MAX_GATES = 16
MAX_STATUS_METRICS = MAX_SETS * MAX_METRICS_PER_SET + len(HELD_OUT_METRICS)

MetricType = Literal["exactMatch", "contains", "regex", "validJson", "rewardModel"]
MetricName = Annotated[
    str, StringConstraints(min_length=1, max_length=63, pattern=r"^[A-Za-z][A-Za-z0-9-]*$")
]
GATE_METRIC_PATTERN = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[A-Za-z][A-Za-z0-9-]*$|^heldOut/(loss|perplexity)$"
)
QualifiedMetric = Annotated[
    str, StringConstraints(min_length=3, max_length=127, pattern=GATE_METRIC_PATTERN)
]
Verdict = Literal["Passed", "Failed", "NotEvaluated"]

_NAME = "(has(m.name) ? m.name : m.type)"


def metric_name(metric: EvaluationMetric) -> str:
    """The metric's name within its set: ``name``, else its type."""
    return metric.name or metric.type


class EvaluationMetric(ApiModel):
    """One metric of an evaluation set, scored per example on the generated response."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.type == 'regex' ? has(self.pattern) : !has(self.pattern)",
                "pattern is required for type regex and applies only to it",
                field_path=".pattern",
            ),
            cel(
                "self.type == 'rewardModel' ? has(self.uri) : !has(self.uri)",
                "uri is required for type rewardModel and applies only to it",
                field_path=".uri",
            ),
        )
    }

    type: MetricType = Field(
        description="exactMatch: the response equals the reference (both stripped of "
        "surrounding whitespace); contains: the response contains the reference; regex: "
        "the response matches pattern (Python re.search); validJson: the response parses "
        "as JSON; rewardModel: the score of a sequence-classification reward model on "
        "prompt + response (e.g. the output of a kubetune reward job)."
    )
    name: MetricName | None = Field(
        default=None,
        description="Name of the metric within its set (default: its type); needed to tell "
        "two metrics of one type apart. Gates name it as <set>/<name>.",
    )
    pattern: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = Field(
        default=None,
        description="Python regular expression (type regex). The API server cannot compile "
        "Python regexes: `kubetune validate` and the operator's validation refuse an invalid "
        "one.",
    )
    uri: Location | None = Field(
        default=None,
        description="Location of the reward model (type rewardModel). " + LOCATION_HELP,
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from exc
        return value


class EvaluationSet(ApiModel):
    """Prompts with references, answered by the tuned model and by the baseline."""

    name: DNSLabel = Field(description="Name of the set; metrics are named <set>/<metric>.")
    uri: Location = Field(
        description='Location of a JSONL file, one {"prompt": ..., "reference": ...} object '
        "per line (the prompt is fed as is: render any chat template into it). " + LOCATION_HELP
    )
    max_examples: int | None = Field(
        default=None, ge=1, le=100000, description="Use at most this many rows (the first)."
    )
    max_new_tokens: int = Field(
        default=64, ge=1, le=4096, description="Tokens generated per prompt (greedy decoding)."
    )
    metrics: list[EvaluationMetric] = Field(
        min_length=1,
        max_length=MAX_METRICS_PER_SET,
        description="Metrics scored on each response.",
        json_schema_extra=validations(
            cel(
                f"self.all(m, self.exists_one(n, (has(n.name) ? n.name : n.type) == {_NAME}))",
                "metric names must be unique within a set (set name on metrics of the same type)",
            )
        ),
    )


class BaselineTolerance(ApiModel):
    """How much worse than the baseline the tuned model may be."""

    tolerance: float = Field(
        default=0.0,
        ge=0.0,
        le=1e9,
        description="Largest acceptable degradation, in the metric's own units (0.02 on "
        "exactMatch = 2 percentage points).",
    )


class EvaluationGate(ApiModel):
    """A bar the tuned model must clear to be promotable; every rule set must hold."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "has(self.noWorseThanBaseline) || has(self.atLeast) || has(self.atMost)",
                "a gate needs at least one of noWorseThanBaseline, atLeast, atMost",
            )
        )
    }

    metric: QualifiedMetric = Field(
        description="<set>/<metric> of a declared set and metric, or heldOut/loss, "
        "heldOut/perplexity (needs the dataset's evaluation split)."
    )
    no_worse_than_baseline: BaselineTolerance | None = Field(
        default=None,
        description="Pass unless the data show, at the evaluation's confidence, a degradation "
        "larger than tolerance: for generation metrics the lower one-sided bootstrap bound of "
        "tuned - baseline is >= -tolerance; for heldOut metrics (lower is better) the upper "
        "bound is <= tolerance (the point estimate where no per-example values exist: "
        "methods dpo and reward, sets over 20,000 examples).",
    )
    at_least: float | None = Field(
        default=None, description="The tuned model's mean must be at least this."
    )
    at_most: float | None = Field(
        default=None, description="The tuned model's mean must be at most this."
    )


class EvaluationSpec(ApiModel):
    """Evaluation after training, of the tuned model against a baseline, and its gates."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "!has(self.gates) || self.gates.all(g, g.metric.startsWith('heldOut/') || "
                "(has(self.sets) && self.sets.exists(s, s.metrics.exists(m, "
                f"s.name + '/' + {_NAME} == g.metric))))",
                "every gate must name a declared metric as <set>/<metric> (or heldOut/loss, "
                "heldOut/perplexity)",
                field_path=".gates",
            ),
            cel(
                "!has(self.sets) || self.sets.all(s, self.sets.exists_one(t, t.name == s.name))",
                "evaluation set names must be unique",
                field_path=".sets",
            ),
        )
    }

    baseline: Location | None = Field(
        default=None,
        description="Model the tuned one is compared with; default: the job's base model "
        "(for PEFT methods measured with the adapter switched off, no second copy). "
        "heldOut metrics always compare with the base model. " + LOCATION_HELP,
    )
    sets: list[EvaluationSet] = Field(
        default_factory=list, max_length=MAX_SETS, description="Evaluation sets."
    )
    gates: list[EvaluationGate] = Field(
        default_factory=list,
        max_length=MAX_GATES,
        description="Bars to clear; none: the evaluation is recorded and the model is promotable.",
    )
    confidence: float = Field(
        default=0.95,
        ge=0.5,
        le=0.999,
        description="Confidence of the one-sided bounds the noWorseThanBaseline gates use; "
        "status reports both bounds (a two-sided interval at 2 x confidence - 1).",
    )
    bootstrap_samples: int = Field(
        default=1000, ge=100, le=100000, description="Bootstrap resamples per metric."
    )
    seed: int = Field(
        default=0, ge=0, le=2**31 - 1, description="Seed of generation and of the bootstrap."
    )


# -- status ---------------------------------------------------------------------------------------
class MetricResult(ApiModel):
    """One metric of the baseline and the tuned model, compared."""

    name: str = Field(max_length=127, description="<set>/<metric> or heldOut/<metric>.")
    baseline: float | None = Field(default=None, description="The baseline's mean.")
    tuned: float | None = Field(default=None, description="The tuned model's mean.")
    delta: float | None = Field(default=None, description="tuned - baseline (mean difference).")
    ci_low: float | None = Field(
        default=None,
        description="Lower one-sided bound of delta at the evaluation's confidence (paired "
        "bootstrap, percentile method); absent for heldOut metrics.",
    )
    ci_high: float | None = Field(
        default=None, description="Upper one-sided bound of delta at the same confidence."
    )
    samples: int | None = Field(default=None, ge=0, description="Examples (or eval tokens).")


class GateResult(ApiModel):
    """The verdict of one gate."""

    metric: str = Field(max_length=127, description="The gated metric.")
    rule: str = Field(max_length=256, description="The rule, in words.")
    passed: bool = Field(description="Whether the tuned model cleared it.")
    message: str = Field(default="", max_length=512, description="The numbers behind it.")


class EvaluationStatus(ApiModel):
    """What the evaluation measured and whether the tuned model may be promoted."""

    verdict: Verdict = Field(
        description="Passed (every gate held), Failed (a gate did not, or evaluation could "
        "not run), NotEvaluated (no summary reached the operator)."
    )
    promotable: bool = Field(description="Whether a rollout may use this model.")
    baseline: str | None = Field(default=None, max_length=1024, description="Baseline model.")
    completed_at: datetime | None = Field(default=None, description="When it was recorded.")
    confidence: float | None = Field(default=None, description="Confidence of the bounds.")
    metrics: list[MetricResult] = Field(
        default_factory=list, max_length=MAX_STATUS_METRICS, description="Measured metrics."
    )
    gates: list[GateResult] = Field(
        default_factory=list, max_length=MAX_GATES, description="Verdict of each gate."
    )
    truncated: int = Field(
        default=0,
        ge=0,
        description="Metrics left out of the trainer's summary to fit the 4 KiB termination "
        "message (all are in evaluation.json in the output).",
    )
    message: str = Field(default="", max_length=1024, description="Summary in words.")
