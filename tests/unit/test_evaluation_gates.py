"""The gate rule: one-sided bootstrap bound vs. tolerance, point rules, held-out metrics
(bootstrapped from per-example sums when there are some, point estimates otherwise)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from kubetune.api.evaluation import EvaluationSpec
from kubetune_trainer.evaluation.gates import (
    CorpusFigure,
    PairedScores,
    PairedSums,
    summarize,
)
from kubetune_trainer.evaluation.scoring import contains, exact_match, regex, valid_json


def _spec(*gates: dict[str, Any], **extra: Any) -> EvaluationSpec:
    return EvaluationSpec.model_validate(
        {
            "sets": [
                {
                    "name": "qa",
                    "uri": "pvc://d/qa.jsonl",
                    "metrics": [{"type": "exactMatch"}],
                }
            ],
            "gates": list(gates),
            **extra,
        }
    )


# 40 examples; the tuned model loses 4 and gains 0: a clear degradation of 0.1
BASE = [1.0] * 30 + [0.0] * 10
WORSE = [0.0] * 4 + [1.0] * 26 + [0.0] * 10
HELD = {"heldOut/loss": CorpusFigure(2.0, 1.5, 900), "heldOut/perplexity": CorpusFigure(7.4, 4.5)}


def test_clear_degradation_fails_no_worse_than_baseline() -> None:
    spec = _spec({"metric": "qa/exactMatch", "noWorseThanBaseline": {"tolerance": 0.02}})
    s = summarize(spec, "pvc://m/base", {"qa/exactMatch": PairedScores(BASE, WORSE)}, HELD)
    assert s.verdict == "Failed"
    [gate] = s.gates
    assert not gate.passed
    assert "lower 95% bound of tuned - baseline" in gate.message and "< -0.02" in gate.message
    metric = next(m for m in s.metrics if m.name == "qa/exactMatch")
    assert metric.delta is not None and abs(metric.delta + 0.1) < 1e-12
    assert metric.ci_low is not None and metric.ci_high is not None
    assert metric.ci_low < -0.02 and metric.ci_high <= 0.0
    assert "1 of 1 gates failed" in s.message


def test_a_large_enough_tolerance_passes_and_equal_models_pass() -> None:
    wide = _spec({"metric": "qa/exactMatch", "noWorseThanBaseline": {"tolerance": 0.5}})
    assert summarize(wide, "b", {"qa/exactMatch": PairedScores(BASE, WORSE)}, {}).verdict == (
        "Passed"
    )
    strict = _spec({"metric": "qa/exactMatch", "noWorseThanBaseline": {}})
    same = summarize(strict, "b", {"qa/exactMatch": PairedScores(BASE, BASE)}, {})
    assert same.verdict == "Passed" and same.gates[0].passed


def test_at_least_and_at_most_use_the_tuned_mean() -> None:
    spec = _spec(
        {"metric": "qa/exactMatch", "atLeast": 0.6, "atMost": 0.7},
        {"metric": "qa/exactMatch", "atLeast": 1.1},
    )
    s = summarize(spec, "b", {"qa/exactMatch": PairedScores(BASE, WORSE)}, {})
    assert [g.passed for g in s.gates] == [True, False]  # tuned mean is 0.65
    assert s.gates[0].rule == "tuned >= 0.6 and tuned <= 0.7"
    assert "tuned = 0.65, atLeast 1.1" in s.gates[1].message


def test_held_out_gates_are_lower_is_better_point_comparisons() -> None:
    spec = _spec(
        {"metric": "heldOut/loss", "noWorseThanBaseline": {"tolerance": 0.0}},
        {"metric": "heldOut/perplexity", "atMost": 4.0},
    )
    s = summarize(spec, "b", {}, HELD)
    assert [g.passed for g in s.gates] == [True, False]
    loss = next(m for m in s.metrics if m.name == "heldOut/loss")
    assert loss.delta == -0.5 and loss.ci_low is None and loss.samples == 900
    worse = summarize(spec, "b", {}, {"heldOut/loss": CorpusFigure(1.0, 1.2)})
    assert not worse.gates[0].passed and "> 0" in worse.gates[0].message
    assert "point estimate" in worse.gates[0].message  # the fallback says so


def _held_out(base: list[float], tuned: list[float], tokens: list[float]) -> dict[str, Any]:
    sums = PairedSums(base, tuned, tokens)
    return {
        f"heldOut/{key}": CorpusFigure(None, None, int(sum(tokens)), sums)
        for key in ("loss", "perplexity")
    }


# 60 examples of 5-24 tokens; the tuned model is 0.05 nats/token better on average but
# noisy: the point estimate improves, the upper bound of the difference does not rule out
# a small degradation
_TOKENS = [float(5 + i % 20) for i in range(60)]
_BASE_NLL = [t * (2.0 + 0.3 * ((i * 7) % 5 - 2)) for i, t in enumerate(_TOKENS)]
_NOISY = [
    b + t * (-0.05 + 0.4 * ((i * 11) % 3 - 1))
    for i, (b, t) in enumerate(zip(_BASE_NLL, _TOKENS, strict=True))
]


def test_held_out_gates_use_the_upper_bound_of_a_paired_ratio_bootstrap() -> None:
    spec = _spec(
        {"metric": "heldOut/loss", "noWorseThanBaseline": {"tolerance": 0.0}},
        {"metric": "heldOut/perplexity", "noWorseThanBaseline": {"tolerance": 0.0}},
    )
    s = summarize(spec, "b", {}, _held_out(_BASE_NLL, _NOISY, _TOKENS))
    loss = next(m for m in s.metrics if m.name == "heldOut/loss")
    ppl = next(m for m in s.metrics if m.name == "heldOut/perplexity")
    assert loss.baseline == pytest.approx(sum(_BASE_NLL) / sum(_TOKENS))
    assert loss.tuned == pytest.approx(sum(_NOISY) / sum(_TOKENS))
    assert loss.delta is not None and loss.delta < 0.0  # better as a point estimate ...
    assert loss.ci_low is not None and loss.ci_high is not None
    assert loss.ci_low <= loss.delta <= loss.ci_high
    assert loss.ci_high > 0.0  # ... but not convincingly
    assert loss.samples == 60
    assert loss.tuned is not None and loss.baseline is not None
    assert ppl.delta == pytest.approx(math.exp(loss.tuned) - math.exp(loss.baseline))
    assert ppl.ci_high is not None and ppl.ci_high > 0.0
    assert [g.passed for g in s.gates] == [False, False]
    assert "upper 95% bound of tuned - baseline" in s.gates[0].message
    assert "> 0" in s.gates[0].message
    # the point rule alone would have passed the same figures
    point = summarize(spec, "b", {}, {"heldOut/loss": CorpusFigure(loss.baseline, loss.tuned)})
    assert point.gates[0].passed
    # a tolerance above the upper bound passes; a consistent improvement passes at 0
    loose = _spec({"metric": "heldOut/loss", "noWorseThanBaseline": {"tolerance": 0.5}})
    assert summarize(loose, "b", {}, _held_out(_BASE_NLL, _NOISY, _TOKENS)).gates[0].passed
    better = [b - 0.1 * t for b, t in zip(_BASE_NLL, _TOKENS, strict=True)]
    clear = summarize(spec, "b", {}, _held_out(_BASE_NLL, better, _TOKENS))
    assert all(g.passed for g in clear.gates), clear.message
    assert "upper bound" in clear.gates[0].message


def test_a_metric_that_was_not_measured_fails_its_gate() -> None:
    spec = _spec({"metric": "heldOut/loss", "atMost": 10.0})
    s = summarize(spec, "b", {}, {})
    assert s.verdict == "Failed" and "not measured" in s.gates[0].message


def test_no_gates_passes() -> None:
    s = summarize(_spec(), "b", {"qa/exactMatch": PairedScores(BASE, WORSE)}, HELD)
    assert s.verdict == "Passed" and s.message == "no gates"


def test_scorers() -> None:
    assert exact_match(" 4 \n", "4") == 1.0 and exact_match("42", "4") == 0.0
    assert contains("the answer is 4.", "4") == 1.0 and contains("five", "4") == 0.0
    assert regex(r"^\d+$")("123", "") == 1.0 and regex(r"^\d+$")("12a", "") == 0.0
    assert valid_json(' {"a": 1} ', "") == 1.0 and valid_json("{a:1}", "") == 0.0
