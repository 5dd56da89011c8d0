"""A command whose optional extra is missing names the extra instead of vanishing."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from kubetune.cli import extras
from kubetune.cli.main import app


def test_every_subcommand_is_registered_whatever_is_installed() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("validate", "crd", "run", "dev", "operator"):
        assert name in result.output


def test_missing_extra_names_the_extra_and_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(extras.EXTRA_MODULES, "trainer", ("json", "no_such_module_xyz"))
    with pytest.raises(typer.Exit) as exit_info:
        extras.require_extra("trainer", "run --local")
    assert exit_info.value.exit_code == extras.MISSING_EXTRA_EXIT_CODE
    err = capsys.readouterr().err
    assert "'trainer' extra" in err and "no_such_module_xyz" in err
    assert "pip install 'kubetune[trainer]'" in err
    assert "json" not in err.split("missing:")[1]


def test_installed_extra_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(extras.EXTRA_MODULES, "operator", ("json", "os"))
    extras.require_extra("operator", "operator run")
