"""The evaluation summary in the termination message: round trip and the 4 KiB bound."""

from __future__ import annotations

import math

from kubetune.contract.evaluation import (
    MAX_MESSAGE_BYTES,
    EvaluationSummary,
    GateSummary,
    MetricSummary,
    encode_summary,
    parse_termination_message,
    summary_document,
    termination_message,
)


def _summary(metrics: int, gates: int = 2) -> EvaluationSummary:
    return EvaluationSummary(
        verdict="Failed",
        baseline="pvc://models/base",
        confidence=0.95,
        metrics=[
            MetricSummary(
                name=f"set-{i // 8}/metric-number-{i}",
                baseline=0.123456789,
                tuned=0.2,
                delta=0.0765432,
                ci_low=-0.01,
                ci_high=0.15,
                samples=500,
            )
            for i in range(metrics)
        ],
        gates=[
            GateSummary(
                metric=f"set-0/metric-number-{i}",
                rule="lower 95% bound of tuned - baseline >= -0.02",
                passed=i != 0,
                message="x" * 400,
            )
            for i in range(gates)
        ],
        message="1 of 2 gates failed: " + "y" * 2000,
    )


def test_round_trip_keeps_the_first_line_human() -> None:
    summary = _summary(3)
    text = termination_message("training finished: 40 steps, outputs in /out", summary)
    first, second = text.split("\n")
    assert first == "training finished: 40 steps, outputs in /out"
    parsed = parse_termination_message(text)
    assert parsed is not None
    assert parsed.verdict == "Failed" and parsed.baseline == "pvc://models/base"
    assert [m.name for m in parsed.metrics] == [m.name for m in summary.metrics]
    assert parsed.metrics[0].baseline == 0.123457  # 6 significant digits
    assert [g.metric for g in parsed.failed_gates] == ["set-0/metric-number-0"]
    assert len(second) < 1500


def test_many_metrics_are_truncated_deterministically_keeping_gated_ones() -> None:
    summary = _summary(66, gates=16)
    text = termination_message("training finished: " + "z" * 5000, summary)
    assert len(text.encode()) <= MAX_MESSAGE_BYTES < 4096
    assert text == termination_message("training finished: " + "z" * 5000, summary)
    parsed = parse_termination_message(text)
    assert parsed is not None
    assert parsed.truncated > 0 and len(parsed.metrics) + parsed.truncated == 66
    kept = [m.name for m in parsed.metrics]
    # ungated metrics went first, then gated ones from the end: the first gated remain
    assert kept == [f"set-0/metric-number-{i}" for i in range(len(kept))]
    assert len(kept) >= 4
    assert len(parsed.gates) == 16  # gates are never dropped


def test_non_finite_numbers_become_absent() -> None:
    summary = EvaluationSummary(
        verdict="Passed", metrics=[MetricSummary(name="qa/x", baseline=math.nan, tuned=1.0)]
    )
    parsed = parse_termination_message(encode_summary(summary))
    assert parsed is not None and parsed.metrics[0].baseline is None


def test_missing_or_garbled_summaries_parse_as_none() -> None:
    assert parse_termination_message(None) is None
    assert parse_termination_message("training finished: 3 steps") is None
    assert parse_termination_message("done\nkubetune-evaluation {not json") is None
    assert parse_termination_message('kubetune-evaluation {"verdict": "Maybe"}') is None


def test_document_uses_readable_keys() -> None:
    doc = summary_document(_summary(1))
    assert set(doc["metrics"][0]) == {
        "name",
        "baseline",
        "tuned",
        "delta",
        "ciLow",
        "ciHigh",
        "samples",
    }
    assert set(doc["gates"][0]) == {"metric", "rule", "passed", "message"}
