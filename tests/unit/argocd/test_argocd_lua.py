"""The Argo CD health check and actions of charts/kubetune/argocd, run in Lua 5.1 (lupa) the
way Argo CD's own tests run resource customizations (health_test.yaml, action_test.yaml),
in the sandbox Argo CD gives scripts installed through argocd-cm (see argocd_lua.py)."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.argocd.argocd_lua import (
    FINETUNEJOB,
    ArgoLua,
    Customization,
    LuaScriptError,
    check_action_case,
    check_discovery_case,
    check_health_case,
    load_yaml,
)

CUSTOM = Customization(FINETUNEJOB)
HEALTH_CASES = yaml.safe_load((FINETUNEJOB / "health_test.yaml").read_text())["tests"]
ACTION_TESTS = yaml.safe_load((FINETUNEJOB / "actions" / "action_test.yaml").read_text())
DISCOVERY_CASES = ACTION_TESTS["discoveryTests"]
ACTION_CASES = ACTION_TESTS["actionTests"]

#: Objects the e2e test (tests/e2e/test_argocd_health.py) recorded from the dev cluster.
RECORDED = [
    "progressing_newWithoutStatus",
    "progressing_newGeneration",
    "progressing_validating",
    "progressing_waitingForCapacity",
    "progressing_running",
    "progressing_progressUnknown",
    "progressing_updatesPending",
    "suspended",
    "healthy_succeeded",
    "degraded_failed",
    "degraded_podCreationFailed",
    "degraded_gangNeverFits",
    "degraded_gangUnschedulable",
    "degraded_imagePullBackOff",
]


def _id(case: dict[str, Any]) -> str:
    return str(case.get("action", "")) + ":" + Path(case["inputPath"]).stem


# -- the cases, as Argo CD's TestLuaHealthScript / TestLuaResourceActionsScript -----------------
@pytest.mark.parametrize("case", HEALTH_CASES, ids=_id)
def test_health(case: dict[str, Any]) -> None:
    check_health_case(CUSTOM, case)


@pytest.mark.parametrize("case", DISCOVERY_CASES, ids=_id)
def test_discovery(case: dict[str, Any]) -> None:
    check_discovery_case(CUSTOM, case)


@pytest.mark.parametrize("case", ACTION_CASES, ids=_id)
def test_action(case: dict[str, Any]) -> None:
    check_action_case(CUSTOM, case, time.time())


def test_every_testdata_file_is_used_and_recorded_ones_are_covered() -> None:
    health_inputs = {c["inputPath"] for c in HEALTH_CASES}
    on_disk = {f"testdata/{p.name}" for p in (FINETUNEJOB / "testdata").glob("*.yaml")}
    assert health_inputs == on_disk
    assert {f"testdata/{n}.yaml" for n in RECORDED} <= health_inputs
    action_files = {c["inputPath"] for c in DISCOVERY_CASES} | {
        p for c in ACTION_CASES for p in (c["inputPath"], c.get("expectedOutputPath")) if p
    }
    on_disk = {f"testdata/{p.name}" for p in (FINETUNEJOB / "actions" / "testdata").glob("*.yaml")}
    assert action_files == on_disk
    statuses = {c["healthStatus"]["status"] for c in HEALTH_CASES}
    assert {"Healthy", "Progressing", "Degraded", "Suspended"} <= statuses


# -- the checks catch wrong expectations ---------------------------------------------------------
@pytest.mark.parametrize("case", HEALTH_CASES, ids=_id)
def test_a_wrong_health_expectation_fails(case: dict[str, Any]) -> None:
    wrong_status = copy.deepcopy(case)
    status = case["healthStatus"]["status"]
    wrong_status["healthStatus"]["status"] = "Healthy" if status != "Healthy" else "Degraded"
    with pytest.raises(AssertionError):
        check_health_case(CUSTOM, wrong_status)
    wrong_message = copy.deepcopy(case)
    wrong_message["healthStatus"]["message"] = case["healthStatus"].get("message", "") + "x"
    with pytest.raises(AssertionError):
        check_health_case(CUSTOM, wrong_message)


@pytest.mark.parametrize("case", DISCOVERY_CASES, ids=_id)
def test_a_wrong_discovery_expectation_fails(case: dict[str, Any]) -> None:
    for i in range(len(case["result"])):
        flipped = copy.deepcopy(case)
        flipped["result"][i]["disabled"] = not flipped["result"][i].get("disabled", False)
        with pytest.raises(AssertionError):
            check_discovery_case(CUSTOM, flipped)
    missing = copy.deepcopy(case)
    missing["result"].pop()
    with pytest.raises(AssertionError):
        check_discovery_case(CUSTOM, missing)
    extra = copy.deepcopy(case)
    extra["result"].append({"name": "terminate"})
    with pytest.raises(AssertionError):
        check_discovery_case(CUSTOM, extra)


@pytest.mark.parametrize("case", ACTION_CASES, ids=_id)
def test_a_wrong_action_expectation_fails(case: dict[str, Any], tmp_path: Path) -> None:
    if case.get("expectedErrorMessage"):
        wrong = {**case, "expectedErrorMessage": case["expectedErrorMessage"] + "x"}
        with pytest.raises(AssertionError):
            check_action_case(CUSTOM, wrong, time.time())
        return
    # The expected output with one more field, or with the action's change undone.
    root = tmp_path / "FineTuneJob"
    (root / "actions" / "testdata").mkdir(parents=True)
    for p in (FINETUNEJOB / "actions").rglob("*"):
        if p.is_file():
            dest = root / "actions" / p.relative_to(FINETUNEJOB / "actions")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(p.read_bytes())
    custom = Customization(root)
    wrong = {**case, "expectedOutputPath": "testdata/wrong-expected.yaml"}
    wrong_path = root / "actions" / wrong["expectedOutputPath"]
    expected = load_yaml(root / "actions" / case["expectedOutputPath"])
    expected["metadata"].setdefault("labels", {})["extra"] = "x"
    wrong_path.write_text(yaml.safe_dump(expected))
    with pytest.raises(AssertionError):
        check_action_case(custom, wrong, time.time())
    if case["inputPath"] != case["expectedOutputPath"]:
        wrong_path.write_text((root / "actions" / case["inputPath"]).read_text())
        with pytest.raises(AssertionError):
            check_action_case(custom, wrong, time.time())


def test_a_stale_restart_time_fails() -> None:
    case = next(c for c in ACTION_CASES if c["action"] == "restart" and "expectedOutputPath" in c)
    with pytest.raises(AssertionError, match="is not now"):
        check_action_case(CUSTOM, case, time.time() + 3600)


# -- the sandbox is Argo CD's, not a full Lua ----------------------------------------------------
@pytest.mark.parametrize(
    "script",
    [
        'return string.format("%d", 1)',
        "return math.floor(1.5)",
        'return os.date("!%Y")',  # the global os does not exist: require("os") it
        'return ("x"):upper()',
        'return require("io")',
        'return io.open("/etc/passwd")',
    ],
)
def test_the_sandbox_has_only_what_argocd_gives_scripts(script: str) -> None:
    with pytest.raises(LuaScriptError):
        ArgoLua().run(script, {})


def test_the_sandbox_safe_os_and_table() -> None:
    got = ArgoLua().run(
        'local os = require("os"); return {os.date("!%Y-%m-%dT%H:%M:%SZ"), table.getn(obj.a)}',
        {"a": [1, 2, 3]},
    )
    assert got[1] == 3
    stamp = time.mktime(time.strptime(got[0], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert abs(stamp - time.time()) < 3


def test_scripts_do_not_use_libraries_argocd_withholds() -> None:
    """Also checked by running them; this names the mistake directly."""
    for path in FINETUNEJOB.rglob("*.lua"):
        text = path.read_text()
        for banned in ("string.", "math.", "io.", "debug.", ":sub(", ":find(", ":match("):
            code = "\n".join(line.split("--")[0] for line in text.splitlines())
            assert banned not in code, f"{path.name} uses {banned}"


# -- behaviour worth stating on its own ---------------------------------------------------------
def _running() -> dict[str, Any]:
    obj: dict[str, Any] = load_yaml(FINETUNEJOB / "testdata" / "progressing_running.yaml")
    return obj


def test_a_verdict_wins_over_a_newer_generation() -> None:
    for name, status in (("healthy_succeeded", "Healthy"), ("degraded_failed", "Degraded")):
        obj = load_yaml(FINETUNEJOB / "testdata" / f"{name}.yaml")
        obj["metadata"]["generation"] = obj["status"].get("observedGeneration", 1) + 5
        assert CUSTOM.health(obj)["status"] == status


def test_waiting_for_capacity_is_progressing_but_never_fits_is_degraded() -> None:
    obj = load_yaml(FINETUNEJOB / "testdata" / "degraded_gangNeverFits.yaml")
    for cond in obj["status"]["conditions"]:
        if cond["type"] == "Admitted":
            cond["reason"] = "WaitingForCapacity"
    assert CUSTOM.health(obj)["status"] == "Progressing"


def test_a_cleared_blocking_condition_is_progressing_again() -> None:
    obj = load_yaml(FINETUNEJOB / "testdata" / "degraded_podCreationFailed.yaml")
    obj["status"]["conditions"] = [
        c for c in obj["status"]["conditions"] if c["type"] != "PodCreationFailed"
    ]
    assert CUSTOM.health(obj)["status"] == "Progressing"


def test_health_without_conditions_or_progress() -> None:
    obj = _running()
    del obj["status"]["conditions"], obj["status"]["progress"]
    assert CUSTOM.health(obj) == {"status": "Progressing", "message": "running"}
