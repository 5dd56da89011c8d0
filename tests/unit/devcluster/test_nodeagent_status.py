"""Pod status documents the node agent reports (restartPolicy Never)."""

from __future__ import annotations

from kubetune.devcluster.nodeagent.status import (
    Exit,
    exit_reason,
    running_status,
    terminated_status,
    termination_message,
    waiting_status,
)

POD = {"spec": {"containers": [{"name": "trainer", "image": "kubetune/trainer:1"}]}}


def conditions(status: dict) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


def test_running() -> None:
    st = running_status(POD, "10.250.0.1", "10.250.0.2", "t0", "kubetune-real://x", "t1")
    assert st["phase"] == "Running" and st["podIP"] == "10.250.0.2"
    assert st["podIPs"] == [{"ip": "10.250.0.2"}] and st["hostIP"] == "10.250.0.1"
    assert conditions(st) == {
        "PodReadyToStartContainers": "True",
        "Initialized": "True",
        "Ready": "True",
        "ContainersReady": "True",
        "PodScheduled": "True",
    }
    (cs,) = st["containerStatuses"]
    assert cs["ready"] and cs["state"] == {"running": {"startedAt": "t1"}}


def test_terminated_success_and_failure() -> None:
    ok = terminated_status(
        POD, "h", "10.250.0.2", "t0", "id", Exit(0, exit_reason(0), "", "t1", "t2")
    )
    assert ok["phase"] == "Succeeded" and conditions(ok)["Ready"] == "False"
    done = ok["containerStatuses"][0]["state"]["terminated"]
    assert done["exitCode"] == 0 and done["reason"] == "Completed" and "message" not in done
    bad = terminated_status(
        POD, "h", None, "t0", "id", Exit(75, exit_reason(75), "preempted", "t1", "t2")
    )
    assert bad["phase"] == "Failed" and "podIP" not in bad
    term = bad["containerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["reason"], term["message"]) == (75, "Error", "preempted")
    assert exit_reason(137, oom_killed=True) == "OOMKilled"


def test_waiting_for_config() -> None:
    st = waiting_status(POD, "h", "t0", "CreateContainerConfigError", "Secret 's3' not found")
    assert st["phase"] == "Pending" and conditions(st)["Ready"] == "False"
    assert st["containerStatuses"][0]["state"]["waiting"]["reason"] == (
        "CreateContainerConfigError"
    )


def test_termination_message_policy() -> None:
    logs = "\n".join(f"line {i}" for i in range(200))
    assert termination_message("bad data: row 3", logs, 2, "FallbackToLogsOnError") == (
        "bad data: row 3"
    )
    fallback = termination_message("", logs, 1, "FallbackToLogsOnError")
    assert fallback.endswith("line 199") and "line 119" not in fallback  # last 80 lines
    assert termination_message("", logs, 1, "File") == ""
    assert termination_message("", logs, 0, "FallbackToLogsOnError") == ""  # success: no logs
    assert len(termination_message("x" * 10000, "", 1).encode()) == 4096
