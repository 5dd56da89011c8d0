"""``--validate-only``: the operator's CPU check, with the right exit code and message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from kubetune.contract import ExitCode
from tests.trainer.helpers import manifest, run_trainer, write_config


def _run(doc: dict, tmp_path: Path, *args: str, **env: str):
    out = tmp_path / "out"
    config = write_config(doc, tmp_path / "job.json")
    proc = run_trainer(config, out, "--validate-only", *args, **env)
    termination = tmp_path / "out.termination-log"
    return proc, termination.read_text() if termination.exists() else ""


def test_good_job_passes(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    doc = manifest(
        "lora",
        tiny_model,
        data_dir / "chat.jsonl",
        "chat",
        tmp_path / "out",
        eval_split=0.1,
        peft={"lora": {"r": 2}},
    )
    proc, message = _run(doc, tmp_path)
    assert proc.returncode == ExitCode.SUCCESS, proc.stderr[-2000:]
    assert "validation passed" in proc.stdout and "48 rows" in proc.stdout.replace(
        "48 of 48 rows", "48 rows"
    )
    assert message.startswith("validation passed")
    assert not (tmp_path / "out" / "checkpoints").exists()  # nothing trained


def test_the_resource_plan_rides_in_the_termination_message(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    """kubetune plan's estimate from the mounted config.json and the tokenized data."""
    from kubetune.contract.plan import parse_plan, without_plan

    doc = manifest(
        "full",
        tiny_model,
        data_dir / "text.jsonl",
        "text",
        tmp_path / "out",
        resources={
            "nodes": 1,
            "gpusPerNode": 1,
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"},
        },
    )
    proc, message = _run(doc, tmp_path)
    assert proc.returncode == ExitCode.SUCCESS, proc.stderr[-2000:]
    plan = parse_plan(message)
    assert plan is not None and plan.gpu == "L4" and plan.fit == "Fits"
    assert plan.memory_bytes["weights"] > 0 and plan.memory_bytes["activations"] > 0
    assert plan.tokens_per_epoch and plan.epoch_seconds is not None
    human = without_plan(message)
    assert human.startswith("validation passed") and "estimated peak memory" in human
    assert "\n" not in human, "one human line, then the plan line"


def test_env_flag_also_selects_validate_only(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    from tests.trainer.helpers import run_trainer as run

    doc = manifest("full", tiny_model, data_dir / "text.jsonl", "text", tmp_path / "out")
    proc = run(
        write_config(doc, tmp_path / "job.json"), tmp_path / "out", KUBETUNE_VALIDATE_ONLY="1"
    )
    assert proc.returncode == 0 and "validation passed" in proc.stdout


def test_bad_rows_fail_with_invalid_data(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    lines = (data_dir / "chat.jsonl").read_text().splitlines()
    lines[3] = json.dumps({"messages": [{"role": "user", "content": "no answer"}]})
    lines[7] = "{broken"
    bad.write_text("\n".join(lines) + "\n")
    doc = manifest("lora", tiny_model, bad, "chat", tmp_path / "out", peft={"lora": {"r": 2}})
    proc, message = _run(doc, tmp_path)
    assert proc.returncode == ExitCode.INVALID_DATA
    assert f"{bad}:4: " in message and f"{bad}:8: invalid JSON" in message
    assert "2 of 48 train rows are invalid" in message


def test_wrong_format_fails_with_invalid_data(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    doc = manifest(
        "full", tiny_model, data_dir / "chat.jsonl", "promptCompletion", tmp_path / "out"
    )
    proc, message = _run(doc, tmp_path)
    assert proc.returncode == ExitCode.INVALID_DATA and "missing column 'prompt'" in message


def test_missing_dataset_fails_with_invalid_data(tiny_model: Path, tmp_path: Path) -> None:
    doc = manifest("full", tiny_model, tmp_path / "nope.jsonl", "text", tmp_path / "out")
    proc, message = _run(doc, tmp_path)
    assert proc.returncode == ExitCode.INVALID_DATA and "not found" in message


def test_missing_or_corrupt_model_fails_with_model_unavailable(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    doc = manifest("full", tmp_path / "no-model", data_dir / "text.jsonl", "text", tmp_path / "out")
    proc, message = _run(doc, tmp_path)
    assert proc.returncode == ExitCode.MODEL_UNAVAILABLE and "not found" in message

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    doc = manifest("full", broken, data_dir / "text.jsonl", "text", tmp_path / "out")
    proc, message = _run(doc, tmp_path)
    assert proc.returncode == ExitCode.MODEL_UNAVAILABLE and "safetensors" in message


def test_pvc_and_hf_locations(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    pvc = tmp_path / "pvc"
    shutil.copytree(tiny_model, pvc / "models" / "tiny")
    shutil.copy(data_dir / "text.jsonl", pvc / "models" / "train.jsonl")
    doc = manifest(
        "full", "pvc://models/tiny", "pvc://models/train.jsonl", "text", tmp_path / "out"
    )
    proc, _ = _run(doc, tmp_path, KUBETUNE_PVC_ROOT=str(pvc))
    assert proc.returncode == ExitCode.SUCCESS, proc.stderr[-2000:]
    doc = manifest(
        "full",
        "hf://kubetune-tests/not-cached",
        "pvc://models/train.jsonl",
        "text",
        tmp_path / "out",
    )
    proc, message = _run(doc, tmp_path, KUBETUNE_PVC_ROOT=str(pvc), HF_HOME=str(tmp_path / "hf"))
    assert proc.returncode == ExitCode.MODEL_UNAVAILABLE and "never downloads" in message


def test_unreadable_or_invalid_document_fails_with_invalid_config(tmp_path: Path) -> None:
    from tests.trainer.helpers import run_trainer as run

    config = tmp_path / "job.json"
    config.write_text(
        json.dumps(
            {"apiVersion": "kubetune.io/v1alpha1", "kind": "ResolvedFineTuneJob", "name": "x"}
        )
    )
    proc = run(config, tmp_path / "out", "--validate-only")
    assert proc.returncode == ExitCode.INVALID_CONFIG and "not a valid resolved job" in proc.stderr
    proc = run(tmp_path / "missing.json", tmp_path / "out", "--validate-only")
    assert proc.returncode == ExitCode.INVALID_CONFIG and "cannot read" in proc.stderr


def test_broken_evaluation_set_fails_before_training(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    """An evaluation set runs only after training; its rows are checked before any GPU."""
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"prompt": "2+2?", "reference": "4"}) + "\n{not json\n")
    evaluation = {
        "sets": [{"name": "qa", "uri": str(qa), "metrics": [{"type": "exactMatch"}]}],
        "gates": [{"metric": "qa/exactMatch", "atLeast": 0.5}],
    }
    doc = manifest(
        "lora",
        tiny_model,
        data_dir / "chat.jsonl",
        "chat",
        tmp_path / "out",
        peft={"lora": {"r": 2}},
        evaluation=evaluation,
    )
    proc, message = _run(doc, tmp_path)
    assert proc.returncode == ExitCode.INVALID_DATA, proc.stderr[-2000:]
    assert "evaluation set qa" in message and "line 2" in message
    qa.write_text(json.dumps({"prompt": "2+2?", "reference": "4"}) + "\n")
    proc, message = _run(doc, tmp_path)
    assert proc.returncode == ExitCode.SUCCESS, proc.stderr[-2000:]
    assert "evaluation: 1 set, 1 prompt, 1 gate" in message
