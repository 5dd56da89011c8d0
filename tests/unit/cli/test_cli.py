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


def test_validate_checks_model_rollouts_too(tmp_path: Path) -> None:
    doc = yaml.safe_load((REPO / "examples" / "rollout" / "support-bot.yaml").read_text())
    doc["spec"]["steps"].append({"setWeight": 20, "pause": {}})
    doc["spec"]["analysis"]["metrics"][0]["query"] = 'up{model_name="${modle}"}'
    bad = tmp_path / "rollout.yaml"
    bad.write_text(yaml.safe_dump(doc))
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "exactly one of setWeight, pause or analysis" in text
    assert "only placeholders are ${model}" in text


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


def _write(tmp_path: Path, doc: dict[str, object], name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def test_validate_keeps_brackets_in_messages_and_names(tmp_path: Path) -> None:
    """Rich markup must not eat ``[prefix/]`` or ``[a]`` (issue 9, #18)."""
    doc = minimal_manifest()
    doc["spec"]["resources"]["nodeSelector"] = {"bad key!": "x"}
    doc["spec"]["resources"]["tolerations"] = [{"key": "bad key", "operator": "Exists"}]
    path = _write(tmp_path, doc, "team[a]-job.yaml")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "team[a]-job.yaml" in result.output
    assert "valid label keys ([prefix/]name)" in result.output
    assert "expected a label key ([prefix/]name)" in result.output
    assert "spec.resources.tolerations[0].key" in result.output


def test_validate_warning_with_brackets_survives(tmp_path: Path) -> None:
    doc = minimal_manifest()
    doc["spec"]["hyperparameters"] = {"learningRate": 0.5}
    result = runner.invoke(app, ["validate", str(_write(tmp_path, doc, "w[a].yaml"))])
    assert result.exit_code == 0, result.output
    assert "w[a].yaml" in result.output and "recommended range" in result.output


def test_uri_errors_say_what_is_expected_in_words(tmp_path: Path) -> None:
    doc = minimal_manifest()
    doc["spec"]["model"]["uri"] = "models/llama"
    doc["spec"]["output"]["uri"] = "pvc://ckpt/../../etc/x"
    result = runner.invoke(app, ["validate", str(_write(tmp_path, doc))])
    assert result.exit_code == 1
    assert "spec.model.uri: 'models/llama' is not a valid value: expected pvc://<claim>/<path>" in (
        result.output
    )
    assert "e.g. pvc://models/llama-3-8b" in result.output
    assert "spec.output.uri" in result.output and "without '..' segments" in result.output
    assert "^(" not in result.output and "[^\\s" not in result.output  # no raw regex


def test_run_prints_problems_with_their_brackets(tmp_path: Path) -> None:
    doc = minimal_manifest()
    doc["spec"]["resources"]["nodeSelector"] = {"bad key!": "x"}
    result = runner.invoke(
        app, ["run", "--local", str(_write(tmp_path, doc))], env={"COLUMNS": "300"}
    )
    assert result.exit_code != 0
    assert "([prefix/]name)" in result.output


def test_strict_manifest_types_are_refused_by_validate(tmp_path: Path) -> None:
    """No snake_case aliases, no "64" for an integer, no "yes" for a boolean (#17)."""
    doc = minimal_manifest()
    doc["spec"]["hyperparameters"] = {"learning_rate": 1e-4, "globalBatchSize": "64"}
    doc["spec"]["model"]["trustRemoteCode"] = "yes"
    result = runner.invoke(app, ["validate", str(_write(tmp_path, doc))])
    assert result.exit_code == 1
    assert "spec.hyperparameters.learning_rate: unknown field" in result.output
    assert "spec.hyperparameters.globalBatchSize" in result.output
    assert "spec.model.trustRemoteCode" in result.output
