"""spec.evaluation end to end in the trainer: a LoRA run on a tiny model, generation metrics
for the tuned model and its baseline (the adapter switched off), the paired bootstraps (of
generation scores, and of held-out loss/perplexity from per-example sums gathered across
ranks and kept over a resume), gate verdicts in evaluation.json, the model card and the
termination message."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from kubetune.contract.display import answer_text, prompt_text
from kubetune.contract.evaluation import parse_termination_message
from kubetune_trainer.checkpoint import atomic
from kubetune_trainer.checkpoint.state import BASE_EVAL_EXAMPLES
from kubetune_trainer.errors import PreemptedError
from kubetune_trainer.evaluation.runner import paired_sums
from tests.trainer.helpers import (
    manifest,
    read_json,
    run_torchrun,
    run_trainer,
    train_in_process,
    write_config,
)

#: rows of chat_eval.jsonl (tests/trainer/conftest.py)
EVAL_EXAMPLES = 12

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
            {"metric": "heldOut/perplexity", "noWorseThanBaseline": {"tolerance": 1e9}},
        ],
        "bootstrapSamples": 200,
        "seed": 7,
        **extra,
    }


def _write_qa(path: Path, prompts: list[tuple[str, str]] = PROMPTS) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "reference": r}) + "\n" for p, r in prompts))
    return path


def _lora_doc(tiny_model: Path, data_dir: Path, out: Path, qa: Path, **extra: Any) -> dict:
    return manifest(
        "lora",
        tiny_model,
        data_dir / "chat.jsonl",
        "chat",
        out,
        eval_data=data_dir / "chat_eval.jsonl",
        peft={"lora": {"r": 2, "dropout": 0.0}},  # no dropout: 1 and 2 ranks agree
        evaluation=_evaluation(qa),
        **extra,
    )


@pytest.fixture(scope="module")
def lora_run(tiny_model: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One single-process LoRA run with gates; its output directory."""
    tmp_path = tmp_path_factory.mktemp("lora_run")
    out = tmp_path / "out"
    doc = _lora_doc(tiny_model, data_dir, out, _write_qa(tmp_path / "qa.jsonl"))
    config = write_config(doc, tmp_path / "job.json")
    proc = run_trainer(config, out, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]  # a failed gate does not fail training
    return out


def _held_out(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in report["metrics"] if m["name"].startswith("heldOut/")}


def test_lora_run_with_gates(lora_run: Path, tiny_model: Path) -> None:
    out = lora_run
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
    assert held["baseline"] > 0 and held["tuned"] > 0
    # per-example sums: a paired bootstrap interval over the examples (not the tokens)
    assert held["ciLow"] <= held["delta"] <= held["ciHigh"]
    assert held["ciLow"] < held["ciHigh"]
    assert held["samples"] == EVAL_EXAMPLES
    figures = read_json(out / "eval_results.json")
    assert held["baseline"] == pytest.approx(figures["base"]["loss"], rel=1e-5)
    assert held["tuned"] == pytest.approx(figures["tuned"]["loss"], rel=1e-5)
    ppl = metrics["heldOut/perplexity"]
    assert ppl["tuned"] == pytest.approx(math.exp(held["tuned"]), rel=1e-9)
    assert ppl["ciLow"] <= ppl["delta"] <= ppl["ciHigh"]
    gates = {g["metric"]: g for g in report["gates"]}
    assert gates["heldOut/perplexity"]["passed"] is True
    assert "upper 95% bound" in gates["heldOut/perplexity"]["rule"]
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
    before_after = card.split("## Before and after", 1)[1].split("## Lineage", 1)[0]
    first = responses[0]
    assert "| prompt | base model | tuned model | expected |" in before_after
    cells = [prompt_text(first["prompt"]), answer_text(first["baseline"])]
    assert "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" in before_after
    assert read_json(out / "lineage.json")["evaluationGates"]["verdict"] == "Failed"

    message = (out.parent / "out.termination-log").read_text()
    first, _, _ = message.partition("\n")
    assert first.startswith("training finished:") and "evaluation Failed" in first
    summary = parse_termination_message(message)
    assert summary is not None and summary.verdict == "Failed"
    assert [g.metric for g in summary.failed_gates] == ["qa/exactMatch"]
    assert len(message.encode()) < 4096


def test_two_ranks_gather_held_out_examples_in_example_order(
    lora_run: Path, tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    """DDP over 2 gloo ranks: each rank evaluates every other example; the gathered sums
    are in example order, so the bootstrap (same seed) resamples the same examples and the
    interval equals the single-process one up to float summation order."""
    out = tmp_path / "out"
    doc = _lora_doc(
        tiny_model,
        data_dir,
        out,
        _write_qa(tmp_path / "qa.jsonl", PROMPTS[:2]),
        distributed={"strategy": "ddp"},
    )
    proc = run_torchrun(write_config(doc, tmp_path / "job.json", nproc=2), out, 2, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    two, one = (
        _held_out(read_json(out / "evaluation.json")),
        _held_out(read_json(lora_run / "evaluation.json")),
    )
    for name in ("heldOut/loss", "heldOut/perplexity"):
        assert two[name]["samples"] == EVAL_EXAMPLES
        for key in ("baseline", "tuned", "delta", "ciLow", "ciHigh"):
            assert two[name][key] == pytest.approx(one[name][key], rel=1e-3, abs=1e-5), (
                name,
                key,
            )


def test_held_out_examples_survive_a_resume(
    tiny_model: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The base model is evaluated once, before training; its per-example sums are in the
    checkpoint, so a resumed run still gets held-out intervals."""
    out = tmp_path / "out"
    doc = _lora_doc(
        tiny_model,
        data_dir,
        out,
        _write_qa(tmp_path / "qa.jsonl", PROMPTS[:2]),
        checkpoint={"intervalSteps": 2, "keepLast": 2},
    )
    monkeypatch.setenv("KUBETUNE_STOP_AFTER_STEP", "2")
    with pytest.raises(PreemptedError):
        train_in_process(doc, tmp_path)
    checkpoint = atomic.latest_complete(out / "checkpoints")
    assert checkpoint is not None
    rows = read_json(checkpoint / BASE_EVAL_EXAMPLES)
    assert len(rows) == EVAL_EXAMPLES and all(n > 0 for _, n in rows)
    assert "base_eval_examples" not in read_json(checkpoint / "trainer_state.json")
    monkeypatch.delenv("KUBETUNE_STOP_AFTER_STEP")
    resumed = train_in_process(doc, tmp_path)
    assert resumed.resumed_from == 2
    held = _held_out(read_json(out / "evaluation.json"))["heldOut/loss"]
    assert held["samples"] == EVAL_EXAMPLES
    assert held["ciLow"] <= held["delta"] <= held["ciHigh"]
    base_loss = sum(nll for nll, _ in rows) / sum(n for _, n in rows)
    assert held["baseline"] == pytest.approx(base_loss, rel=1e-9)  # restored, not recomputed


def test_paired_sums_pair_only_matching_examples() -> None:
    base, tuned = [[4.0, 2.0], [9.0, 3.0]], [[3.0, 2.0], [6.0, 3.0]]
    sums = paired_sums(base, tuned)
    assert sums is not None
    assert (list(sums.baseline), list(sums.tuned), list(sums.tokens)) == (
        [4.0, 9.0],
        [3.0, 6.0],
        [2.0, 3.0],
    )
    assert paired_sums(base, None) is None  # e.g. resumed from an older checkpoint
    assert paired_sums(base, tuned[:1]) is None
    assert paired_sums(base, [[3.0, 2.0], [6.0, 4.0]]) is None  # not the same targets


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
