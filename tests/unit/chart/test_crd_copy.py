"""`kubetune crd` writes the chart's copy of the CRD too, and `--check` checks it."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kubetune.api.crd import CRD_FILENAME, render_crd_yaml
from kubetune.cli.main import app

runner = CliRunner()
CHART_COPY = Path("charts/kubetune/crds") / CRD_FILENAME


def test_crd_writes_the_chart_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["crd"]).exit_code == 0
    assert (tmp_path / "crds" / CRD_FILENAME).read_text() == render_crd_yaml()
    assert (tmp_path / CHART_COPY).read_text() == render_crd_yaml()
    assert runner.invoke(app, ["crd", "--check"]).exit_code == 0


def test_crd_check_catches_a_stale_chart_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["crd"]).exit_code == 0
    (tmp_path / CHART_COPY).write_text(render_crd_yaml().replace("ftj", "ft"))
    result = runner.invoke(app, ["crd", "--check"])
    assert result.exit_code == 1
    assert "charts/kubetune/crds" in result.output.replace("\n", "")
    (tmp_path / CHART_COPY).unlink()
    assert runner.invoke(app, ["crd", "--check"]).exit_code == 1


def test_crd_output_dir_writes_only_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["crd", "-o", "out"]).exit_code == 0
    assert (tmp_path / "out" / CRD_FILENAME).is_file()
    assert not (tmp_path / "charts").exists()
