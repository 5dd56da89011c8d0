"""``kubetune plan``: the table, JSON, and the errors that say what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from kubetune.cli.main import app

CONFIG = Path(__file__).parent / "configs" / "llama-3.1-8b.json"
runner = CliRunner()


def _manifest(tmp_path: Path, model: str = "hf://meta-llama/Llama-3.1-8B", **spec: Any) -> Path:
    doc = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "tune"},
        "spec": {
            "method": "full",
            "model": {"uri": model},
            "dataset": {
                "train": str(tmp_path / "train.jsonl"),
                "format": "text",
                "maxSeqLength": 2048,
            },
            "hyperparameters": {"globalBatchSize": 64, "microBatchSize": 8, "epochs": 2},
            "resources": {
                "gpusPerNode": 1,
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            },
            "output": {"uri": "/out"},
            **spec,
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_table_says_it_does_not_fit_and_what_to_change(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text(('{"text": "' + "word " * 2000 + '"}\n') * 100)
    result = runner.invoke(app, ["plan", str(_manifest(tmp_path)), "--model-config", str(CONFIG)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "8,030,261,248 parameters" in out
    assert "H100-80GB (80 GiB): does not fit" in out
    assert "1. enable hyperparameters.gradientCheckpointing" in out
    assert "method lora" in out
    # 100 rows of 10,000 characters: 2,048 tokens each (capped), less the 5% eval split
    assert "194,560 tokens" in out and "per epoch" in out and "assumed" in out


def test_json_has_the_breakdown_and_the_suggestions(tmp_path: Path) -> None:
    path = _manifest(tmp_path)
    result = runner.invoke(
        app,
        [
            "plan",
            str(path),
            "--model-config",
            str(CONFIG),
            "--gpu",
            "H200",
            "-o",
            "json",
            "--tokens-per-second",
            "5000",
            "--epoch-tokens",
            "1000000",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["gpu"] == "H200" and doc["fit"] in ("Fits", "Tight", "DoesNotFit")
    names = [p["name"] for p in doc["breakdown"]]
    assert names[:3] == ["weights", "gradients", "optimizer"] and "activations" in names
    assert doc["peakMemoryBytes"] == sum(p["bytes"] for p in doc["breakdown"])
    assert doc["epochSeconds"] == pytest.approx(200.0)  # 1e6 tokens at 5,000 tokens/s
    assert doc["totalSeconds"] == pytest.approx(400.0)
    assert doc["throughput"] == "given (--tokens-per-second)"


def test_model_config_from_a_local_model_directory(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(CONFIG, model / "config.json")
    result = runner.invoke(app, ["plan", str(_manifest(tmp_path, model=str(model))), "-o", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["model"]["parameters"] == 8_030_261_248


def test_a_remote_model_without_config_says_how_to_supply_it(tmp_path: Path) -> None:
    result = runner.invoke(app, ["plan", str(_manifest(tmp_path))])
    assert result.exit_code == 1
    assert "--model-config" in result.output and "hf://meta-llama/Llama-3.1-8B" in result.output


def test_bad_flags_are_refused(tmp_path: Path) -> None:
    path = str(_manifest(tmp_path))
    unknown = runner.invoke(app, ["plan", path, "--model-config", str(CONFIG), "--gpu", "B9000"])
    assert unknown.exit_code == 2 and "unknown GPU B9000" in unknown.output
    both = runner.invoke(
        app,
        ["plan", path, "--model-config", str(CONFIG), "--mfu", "0.4", "--tokens-per-second", "9"],
    )
    assert both.exit_code == 2 and "not both" in both.output
