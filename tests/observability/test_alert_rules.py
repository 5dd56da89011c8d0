"""The alert rules the chart ships (charts/kubetune/files/rules/*.yaml) checked and unit-tested
with the real promtool, plus the promises around them: every alert has a severity, a summary,
a description and a runbook_url to a page that exists in docs/runbooks/, and every alert has
a promtool case that fires it and one that keeps it silent on healthy series.

The promtool tests (tests/rules/*.test.yaml) load the rules files from the chart itself, so
the expressions tested are exactly those that ship. promtool is the dev tooling's build
(component ``prometheus``; ``make test`` builds it): the promtool tests are skipped, with the
reason, only when it is missing and cannot be built here (and fail instead with CI=true).
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability.prometheus_helpers import promtool

REPO = Path(__file__).resolve().parents[2]
RULES_DIR = REPO / "charts" / "kubetune" / "files" / "rules"
RULE_TESTS_DIR = REPO / "tests" / "rules"
RUNBOOKS_DIR = REPO / "docs" / "runbooks"
VALUES = REPO / "charts" / "kubetune" / "values.yaml"

RULES_FILES = sorted(RULES_DIR.glob("*.yaml"))
TEST_FILES = sorted(RULE_TESTS_DIR.glob("*.test.yaml"))
SEVERITIES = {"critical", "warning", "info"}
RUNBOOK_SECTIONS = ("## Meaning", "## Impact", "## Diagnosis", "## Fix")
#: Recording rules are named level:metric:operations (the Prometheus convention).
RECORD_NAME = re.compile(r"^[a-z][a-z0-9_]*:[a-z][a-z0-9_]*:[a-z][a-z0-9_]*$")


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path}: not a YAML mapping"
    return data


@cache
def _alerts() -> dict[str, dict[str, Any]]:
    """Every alerting rule of every rules file, by name."""
    alerts: dict[str, dict[str, Any]] = {}
    for path in RULES_FILES:
        for group in _load(path)["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert rule["alert"] not in alerts, f"alert {rule['alert']} defined twice"
                    alerts[rule["alert"]] = rule
    return alerts


def _alert_rule_tests() -> list[tuple[str, str, dict[str, Any]]]:
    """(test file, test name, alert_rule_test entry) of every promtool test case."""
    cases = []
    for path in TEST_FILES:
        for test in _load(path)["tests"]:
            for case in test.get("alert_rule_test") or []:
                cases.append((path.name, test.get("name", "?"), case))
    return cases


def _runbook_base() -> str:
    return str(_load(VALUES)["prometheusRule"]["runbookBaseURL"]).rstrip("/")


def _run_promtool(*args: str | Path) -> None:
    tool = promtool()
    proc = subprocess.run(
        [str(tool), *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        pytest.fail(
            f"promtool {' '.join(map(str, args))} exited {proc.returncode}:\n"
            f"{proc.stdout}\n{proc.stderr}",
            pytrace=False,
        )


# -- promtool ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", RULES_FILES, ids=[p.name for p in RULES_FILES])
def test_promtool_check_rules(path: Path) -> None:
    """Syntax, PromQL and templates of each shipped rules file (duplicate rules are fatal)."""
    _run_promtool("check", "rules", "--lint=all", "--lint-fatal", path)


@pytest.mark.parametrize("path", TEST_FILES, ids=[p.name for p in TEST_FILES])
def test_promtool_test_rules(path: Path) -> None:
    """The promtool unit tests: each alert fires (labels and annotations exact) and stays silent."""
    _run_promtool("test", "rules", path)


# -- the rules and their tests, without promtool -----------------------------------------------
def test_rule_and_test_files_are_there() -> None:
    assert {p.name for p in RULES_FILES} >= {"operator.yaml", "training.yaml"}
    assert TEST_FILES, "no promtool tests in tests/rules/"


def test_promtool_tests_load_the_shipped_rules_files() -> None:
    """The tests point at the chart's files (not copies), and every rules file is tested."""
    loaded: set[Path] = set()
    for path in TEST_FILES:
        rule_files = _load(path)["rule_files"]
        for name in rule_files:
            resolved = (path.parent / name).resolve()
            assert resolved.parent == RULES_DIR, f"{path.name}: {name} is not a chart rules file"
            assert resolved.is_file(), f"{path.name}: {name} does not exist"
            loaded.add(resolved)
    assert loaded == {p.resolve() for p in RULES_FILES}


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    base = _runbook_base()
    assert base.startswith("https://") and base.endswith("/docs/runbooks"), base
    alerts = _alerts()
    assert len(alerts) >= 15
    for name, rule in alerts.items():
        assert re.fullmatch(r"Kubetune[A-Z][A-Za-z]+", name), name
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = rule.get("annotations", {})
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        # the file holds the chart's default URL; the chart rebuilds it from the same base
        assert annotations["runbook_url"] == f"{base}/{name}.md", name
        # the description names what is affected, by the labels the alert carries
        expr, description = rule["expr"], annotations["description"]
        for label in ("namespace", "finetunejob"):
            if re.search(rf"\b{label}\b", expr):
                assert f"$labels.{label}" in description, f"{name}: description lacks {label}"


def test_every_alert_has_a_runbook_page() -> None:
    alerts = _alerts()
    index = (RUNBOOKS_DIR / "README.md").read_text()
    for name in alerts:
        page = RUNBOOKS_DIR / f"{name}.md"
        assert page.is_file(), f"no runbook {page.relative_to(REPO)}"
        text = page.read_text()
        assert text.startswith(f"# {name}\n"), f"{page.name}: title"
        for section in RUNBOOK_SECTIONS:
            assert f"\n{section}\n" in text, f"{page.name}: no {section!r} section"
        assert f"[{name}]({name}.md)" in index, f"runbooks/README.md does not list {name}"
    orphans = {p.stem for p in RUNBOOKS_DIR.glob("*.md")} - set(alerts) - {"README"}
    assert not orphans, f"runbooks without an alert: {orphans}"


def test_every_alert_has_a_firing_and_a_silent_test_case() -> None:
    alerts = _alerts()
    firing: dict[str, int] = {}
    silent: dict[str, int] = {}
    for file, test, case in _alert_rule_tests():
        name = case["alertname"]
        assert name in alerts, f"{file} / {test}: tests an unknown alert {name}"
        expected = case.get("exp_alerts") or []
        if not expected:
            silent[name] = silent.get(name, 0) + 1
            continue
        firing[name] = firing.get(name, 0) + 1
        want = alerts[name]
        for alert in expected:
            # labels and annotations are given in full (promtool then compares them exactly)
            labels = alert.get("exp_labels") or {}
            assert labels.get("severity") == want["labels"]["severity"], f"{file} / {test}"
            assert set(alert.get("exp_annotations") or {}) == set(want["annotations"]), (
                f"{file} / {test}: {name} without its annotations"
            )
    assert not set(alerts) - set(firing), f"alerts no test fires: {set(alerts) - set(firing)}"
    assert not set(alerts) - set(silent), (
        f"alerts no test keeps silent: {set(alerts) - set(silent)}"
    )


def test_recording_rules_follow_the_naming_convention() -> None:
    records = [
        rule["record"]
        for path in RULES_FILES
        for group in _load(path)["groups"]
        for rule in group["rules"]
        if "record" in rule
    ]
    for name in records:
        assert RECORD_NAME.match(name), f"{name} is not level:metric:operations"
    assert len(records) == len(set(records))
