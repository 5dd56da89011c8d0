"""The ``kubetune crd`` and ``kubetune validate`` commands, as a user runs them."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from kubetune.api.crd import CRD_FILENAME, render_crd_yaml
from kubetune.cli.main import app
from tests.fixtures.manifests import minimal_manifest

REPO = Path(__file__).resolve().parents[3]
runner = CliRunner()


def test_validate_examples_succeeds() -> None:
    result = runner.invoke(app, ["validate", str(REPO / "examples")])
    assert result.exit_code == 0, result.output
    assert "✓" in result.output and "lora-sft.yaml" in result.output


def test_validate_reports_each_problem_with_its_field(tmp_path: Path) -> None:
    doc = minimal_manifest()
    doc["spec"]["hyperparameters"] = {"globalBatchSize": 100, "learningRate": 2}
    doc["spec"]["env"] = [{"name": "WANDB_API_KEY", "value": "abc"}]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 1
    assert "spec.hyperparameters.learningRate" in result.output
    assert "spec.env[0].value" in result.output or "never inline" in result.output


def test_validate_prints_warnings_but_passes(tmp_path: Path) -> None:
    doc = minimal_manifest()
    doc["spec"]["hyperparameters"] = {"learningRate": 0.05}
    path = tmp_path / "warn.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and "recommended range" in result.output


def test_validate_without_manifests_fails(tmp_path: Path) -> None:
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\n")
    result = runner.invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code == 2


def test_crd_check_detects_drift(tmp_path: Path) -> None:
    (tmp_path / CRD_FILENAME).write_text(render_crd_yaml().replace("ftj", "ft"))
    assert runner.invoke(app, ["crd", "--check", "-o", str(tmp_path)]).exit_code == 1
    assert runner.invoke(app, ["crd", "-o", str(tmp_path)]).exit_code == 0
    assert runner.invoke(app, ["crd", "--check", "-o", str(tmp_path)]).exit_code == 0


def test_crd_to_stdout_is_the_crd() -> None:
    result = runner.invoke(app, ["crd", "-o", "-"])
    assert result.exit_code == 0
    docs = [d for d in yaml.safe_load_all(result.output) if d]
    assert docs[0]["kind"] == "CustomResourceDefinition"
