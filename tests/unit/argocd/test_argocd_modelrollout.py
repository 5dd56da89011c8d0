"""The Argo CD health check and actions of ModelRollout (charts/kubetune/argocd, the same
upstream layout as FineTuneJob's), run in Argo CD's Lua 5.1 sandbox by the same harness.
The testdata objects are statuses the operator's state machine wrote (rollout/state.py)."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.rollout import ABORT_ANNOTATION, PROMOTE_ANNOTATION, RETRY_ANNOTATION
from tests.unit.argocd.argocd_lua import (
    CUSTOMIZATIONS,
    Customization,
    check_action_case,
    check_discovery_case,
    check_health_case,
    load_yaml,
)

MODELROLLOUT = CUSTOMIZATIONS / "kubetune.io" / "ModelRollout"
CUSTOM = Customization(MODELROLLOUT)
HEALTH_CASES = yaml.safe_load((MODELROLLOUT / "health_test.yaml").read_text())["tests"]
ACTION_TESTS = yaml.safe_load((MODELROLLOUT / "actions" / "action_test.yaml").read_text())
DISCOVERY_CASES = ACTION_TESTS["discoveryTests"]
ACTION_CASES = ACTION_TESTS["actionTests"]


def _id(case: dict[str, Any]) -> str:
    return str(case.get("action", "")) + ":" + Path(case["inputPath"]).stem


@pytest.mark.parametrize("case", HEALTH_CASES, ids=_id)
def test_health(case: dict[str, Any]) -> None:
    check_health_case(CUSTOM, case)


@pytest.mark.parametrize("case", DISCOVERY_CASES, ids=_id)
def test_discovery(case: dict[str, Any]) -> None:
    check_discovery_case(CUSTOM, case)


@pytest.mark.parametrize("case", ACTION_CASES, ids=_id)
def test_action(case: dict[str, Any]) -> None:
    check_action_case(CUSTOM, case, time.time())


@pytest.mark.parametrize("case", HEALTH_CASES, ids=_id)
def test_a_wrong_health_expectation_fails(case: dict[str, Any]) -> None:
    wrong = copy.deepcopy(case)
    status = case["healthStatus"]["status"]
    wrong["healthStatus"]["status"] = "Healthy" if status != "Healthy" else "Degraded"
    with pytest.raises(AssertionError):
        check_health_case(CUSTOM, wrong)


def test_every_testdata_file_is_used_and_every_state_is_covered() -> None:
    health_inputs = {c["inputPath"] for c in HEALTH_CASES}
    on_disk = {f"testdata/{p.name}" for p in (MODELROLLOUT / "testdata").glob("*.yaml")}
    assert health_inputs == on_disk
    action_files = {c["inputPath"] for c in DISCOVERY_CASES} | {
        p for c in ACTION_CASES for p in (c["inputPath"], c.get("expectedOutputPath")) if p
    }
    on_disk = {f"testdata/{p.name}" for p in (MODELROLLOUT / "actions" / "testdata").glob("*.yaml")}
    assert action_files == on_disk
    statuses = {c["healthStatus"]["status"] for c in HEALTH_CASES}
    assert {"Healthy", "Progressing", "Degraded", "Suspended", "Unknown"} <= statuses
    assert {c["action"] for c in ACTION_CASES} == {"promote", "promote-full", "abort", "retry"}
    assert {p.name for p in (MODELROLLOUT / "actions").iterdir() if p.is_dir()} == {
        "promote",
        "promote-full",
        "abort",
        "retry",
        "testdata",
    }


def test_actions_set_exactly_the_annotations_the_operator_acts_on() -> None:
    paused = load_yaml(MODELROLLOUT / "actions" / "testdata" / "paused.yaml")
    got = {
        name: CUSTOM.action(name, paused)["metadata"]["annotations"]
        for name in ("promote", "promote-full", "abort")
    }
    assert got == {
        "promote": {PROMOTE_ANNOTATION: "step"},
        "promote-full": {PROMOTE_ANNOTATION: "full"},
        "abort": {ABORT_ANNOTATION: "aborted from Argo CD"},
    }
    rolled_back = load_yaml(MODELROLLOUT / "actions" / "testdata" / "rolledback.yaml")
    assert CUSTOM.action("retry", rolled_back)["metadata"]["annotations"] == {
        RETRY_ANNOTATION: "true"
    }


def test_a_rolled_back_rollout_shows_the_abort_reason_even_without_a_message() -> None:
    obj = load_yaml(MODELROLLOUT / "testdata" / "degraded_rolledBack.yaml")
    del obj["status"]["message"]
    assert CUSTOM.health(obj)["message"].startswith("MetricFailed: ")
    del obj["status"]["abort"]
    assert CUSTOM.health(obj) == {"status": "Degraded", "message": "RolledBack"}


def test_scripts_do_not_use_libraries_argocd_withholds() -> None:
    for path in MODELROLLOUT.rglob("*.lua"):
        code = "\n".join(line.split("--")[0] for line in path.read_text().splitlines())
        for banned in ("string.", "math.", "io.", "debug.", ":sub(", ":find(", ":match("):
            assert banned not in code, f"{path.name} uses {banned}"


def test_the_chart_ships_the_health_check_and_actions() -> None:
    """argocd.enabled: the chart's argocd-cm snippet carries ModelRollout's keys beside
    FineTuneJob's, exactly the files tested above."""
    from tests.unit.chart.chart_helpers import one, render

    data = one(render({"argocd": {"enabled": True}}), "ConfigMap")["data"]
    assert data["resource.customizations.health.kubetune.io_ModelRollout"] == (
        (MODELROLLOUT / "health.lua").read_text()
    )
    actions = yaml.safe_load(data["resource.customizations.actions.kubetune.io_ModelRollout"])
    assert actions["discovery.lua"] == (MODELROLLOUT / "actions" / "discovery.lua").read_text()
    assert {d["name"]: d["action.lua"] for d in actions["definitions"]} == {
        name: (MODELROLLOUT / "actions" / name / "action.lua").read_text()
        for name in ("promote", "promote-full", "abort", "retry")
    }
    assert "resource.customizations.health.kubetune.io_FineTuneJob" in data
