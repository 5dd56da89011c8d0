"""The dashboards in the chart are exactly what the generator writes, and CI checks it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from kubetune.cli.main import app
from kubetune.dashboards.render import DASHBOARD_DIR, DASHBOARDS, render_all, stale_files

REPO = Path(__file__).resolve().parents[3]
runner = CliRunner()


def test_chart_files_equal_a_fresh_generation() -> None:
    rendered = render_all()
    assert set(rendered) == set(DASHBOARDS)
    directory = REPO / DASHBOARD_DIR
    for name, text in rendered.items():
        assert (directory / name).read_text() == text, f"{name} is stale: run kubetune dashboards"
    assert stale_files(directory, rendered) == []


def test_generation_is_deterministic_and_valid_json() -> None:
    first, second = render_all(), render_all()
    assert first == second
    for text in first.values():
        assert text.endswith("\n")
        board = json.loads(text)
        assert board["panels"] and board["uid"].startswith("kubetune-")


def test_check_fails_on_drift_and_on_stray_files(tmp_path: Path) -> None:
    out = str(tmp_path)
    assert runner.invoke(app, ["dashboards", "--check", "-o", out]).exit_code == 1  # missing
    result = runner.invoke(app, ["dashboards", "-o", out])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.glob("*.json")) == sorted(DASHBOARDS)
    assert runner.invoke(app, ["dashboards", "--check", "-o", out]).exit_code == 0

    job = tmp_path / "kubetune-job.json"
    job.write_text(job.read_text().replace('"unit": "s"', '"unit": "ms"', 1))
    result = runner.invoke(app, ["dashboards", "--check", "-o", out])
    assert result.exit_code == 1 and "kubetune-job.json is stale" in " ".join(result.output.split())

    runner.invoke(app, ["dashboards", "-o", out])
    (tmp_path / "old-dashboard.json").write_text("{}")  # a dashboard nobody generates
    (tmp_path / "README.md").write_text("kept")
    assert runner.invoke(app, ["dashboards", "--check", "-o", out]).exit_code == 1
    assert runner.invoke(app, ["dashboards", "-o", out]).exit_code == 0
    assert not (tmp_path / "old-dashboard.json").exists()
    assert (tmp_path / "README.md").read_text() == "kept"
    assert runner.invoke(app, ["dashboards", "--check", "-o", out]).exit_code == 0


def _recipe(makefile: str, target: str) -> list[str]:
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert match, f"no {target} target"
    return [line.strip() for line in match.group(1).splitlines()]


def test_ci_drift_check_covers_the_dashboards() -> None:
    """CI runs `make crd-check`: it must fail on stale dashboards as on a stale CRD."""
    makefile = (REPO / "Makefile").read_text()
    assert "$(BIN)/kubetune dashboards --check" in _recipe(makefile, "crd-check")
    assert "$(BIN)/kubetune dashboards" in _recipe(makefile, "crd")
