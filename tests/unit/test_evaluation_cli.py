"""`kubetune run --local` prints the evaluation table and the gate verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from kubetune.cli import run as run_cli
from kubetune.contract.evaluation import (
    EvaluationSummary,
    GateSummary,
    MetricSummary,
    summary_document,
)


def test_gate_table_and_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = EvaluationSummary(
        verdict="Failed",
        confidence=0.95,
        metrics=[MetricSummary(name="qa/exactMatch", baseline=0.5, tuned=0.25, samples=8)],
        gates=[GateSummary(metric="qa/exactMatch", rule="tuned >= 1.1", passed=False)],
        message="1 of 1 gates failed",
    )
    report = tmp_path / "evaluation.json"
    report.write_text(json.dumps(summary_document(summary)))
    console = Console(record=True, width=160)
    monkeypatch.setattr(run_cli, "console", console)
    run_cli._gates_summary(report)
    text = console.export_text()
    assert "qa/exactMatch" in text and "│ 0.25 " in text
    assert "FAIL qa/exactMatch: tuned >= 1.1" in text
    assert "evaluation Failed: 1 of 1 gates failed" in text
    run_cli._gates_summary(tmp_path / "absent.json")  # no evaluation: prints nothing more
    assert console.export_text() == ""


def test_before_and_after_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prompt = "<|im_start|>user\nReverse these words: lamp river<|im_end|>\n<|im_start|>assistant\n"
    rows = [
        {
            "prompt": prompt,
            "reference": "river lamp",
            "baseline": "a file",
            "tuned": "river lamp",
        },
        {"prompt": "2 + 2 =", "reference": "4", "baseline": "", "tuned": "5"},
    ]
    report = tmp_path / "evaluation.json"
    report.write_text(json.dumps({"verdict": "Passed", "responses": {"tasks": rows}}))
    console = Console(record=True, width=160)
    monkeypatch.setattr(run_cli, "console", console)
    run_cli._before_after(report)
    text = console.export_text()
    assert "before and after: tasks" in text
    assert "prompt" in text and "base model" in text and "tuned model" in text
    lines = text.splitlines()
    first = next(line for line in lines if "Reverse these words: lamp river" in line)
    cells = [c.strip() for c in first.split("│")[1:-1]]
    assert cells == ["Reverse these words: lamp river", "a file", "river lamp", "river lamp"]
    second = next(line for line in lines if "2 + 2 =" in line)
    assert [c.strip() for c in second.split("│")[1:-1]] == ["2 + 2 =", "—", "5", "4"]
    run_cli._before_after(tmp_path / "absent.json")  # no evaluation: prints nothing more
    assert console.export_text() == ""
