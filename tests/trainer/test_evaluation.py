"""spec.evaluation end to end in the trainer: a LoRA run on a tiny model, generation metrics
for the tuned model and its baseline (the adapter switched off), the paired bootstrap, gate
verdicts in evaluation.json, the model card and the termination message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubetune.contract.evaluation import parse_termination_message
from tests.trainer.helpers import manifest, read_json, run_trainer, write_config

PROMPTS = [
    ("user: what is 2+2?\nassistant:", "4"),
    ("user: name a colour\nassistant:", "red"),
    ("user: say hello\nassistant:", "hello"),
    ("user: give json\nassistant:", "{}"),
    ("user: count to three\nassistant:", "one two three"),
    ("user: a fruit?\nassistant:", "apple"),
    ("user: yes or no?\nassistant:", "yes"),
    ("user: the sky is\nassistant:", "blue"),
]


def _evaluation(qa: Path, **extra: Any) -> dict[str, Any]:
    return {
        "sets": [
            {
                "name": "qa",
                "uri": str(qa),
                "maxNewTokens": 8,
                "metrics": [
                    {"type": "exactMatch"},
                    {"type": "contains"},
                    {"type": "validJson"},
                    {"type": "regex", "name": "anyWord", "pattern": r"\w"},
                ],
            }
        ],
        "gates": [
            {"metric": "qa/exactMatch", "atLeast": 1.1},  # impossible: must fail
            {"metric": "qa/validJson", "noWorseThanBaseline": {"tolerance": 1.0}},
            {"metric": "heldOut/loss", "atMost": 1e9},
        ],
        "bootstrapSamples": 200,
        "seed": 7,
        **extra,
    }


def test_lora_run_with_gates(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"prompt": p, "reference": r}) + "\n" for p, r in PROMPTS))
    out = tmp_path / "out"
    doc = manifest(
        "lora",
        tiny_model,
        data_dir / "chat.jsonl",
        "chat",
        out,
        eval_data=data_dir / "chat_eval.jsonl",
        peft={"lora": {"r": 2}},
        evaluation=_evaluation(qa),
    )
    config = write_config(doc, tmp_path / "job.json")
    proc = run_trainer(config, out, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]  # a failed gate does not fail training

    report = read_json(out / "evaluation.json")
    assert report["verdict"] == "Failed"
    assert report["baseline"] == str(tiny_model)
    metrics = {m["name"]: m for m in report["metrics"]}
    assert set(metrics) == {
        "heldOut/loss",
        "heldOut/perplexity",
        "qa/exactMatch",
        "qa/contains",
        "qa/validJson",
        "qa/anyWord",
    }
    for name in ("qa/exactMatch", "qa/contains", "qa/validJson", "qa/anyWord"):
        m = metrics[name]
        assert m["samples"] == len(PROMPTS)
        assert 0.0 <= m["baseline"] <= 1.0 and 0.0 <= m["tuned"] <= 1.0
        assert m["ciLow"] <= m["delta"] <= m["ciHigh"]
    held = metrics["heldOut/loss"]
    assert held["baseline"] > 0 and held["tuned"] > 0 and held["ciLow"] is None
    gates = {g["metric"]: g for g in report["gates"]}
    assert gates["qa/exactMatch"]["passed"] is False
    assert "atLeast 1.1" in gates["qa/exactMatch"]["message"]
    assert gates["qa/validJson"]["passed"] is True
    assert gates["heldOut/loss"]["passed"] is True
    responses = report["responses"]["qa"]
    assert len(responses) == len(PROMPTS)
    # the baseline is the same module with the adapter off: it answers differently
    assert any(r["baseline"] != r["tuned"] for r in responses)

    card = (out / "README.md").read_text()
    assert "## Evaluation gates" in card and "qa/exactMatch" in card
    assert read_json(out / "lineage.json")["evaluationGates"]["verdict"] == "Failed"

    message = (tmp_path / "out.termination-log").read_text()
    first, _, _ = message.partition("\n")
    assert first.startswith("training finished:") and "evaluation Failed" in first
    summary = parse_termination_message(message)
    assert summary is not None and summary.verdict == "Failed"
    assert [g.metric for g in summary.failed_gates] == ["qa/exactMatch"]
    assert len(message.encode()) < 4096


def test_evaluation_that_cannot_run_is_recorded(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    doc = manifest(
        "lora",
        tiny_model,
        data_dir / "chat.jsonl",
        "chat",
        out,
        hyper={"maxSteps": 1},
        peft={"lora": {"r": 2}},
        evaluation=_evaluation(tmp_path / "missing.jsonl", gates=[]),
    )
    proc = run_trainer(write_config(doc, tmp_path / "job.json"), out, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = read_json(out / "evaluation.json")
    assert report["verdict"] == "Failed" and report["gates"] == []
    assert "could not run" in report["message"] and "missing.jsonl" in report["message"]
    summary = parse_termination_message((tmp_path / "out.termination-log").read_text())
    assert summary is not None and summary.verdict == "Failed"
