"""The chaos suite's detectors can fail: fed states with a duplicate gang or a job stuck
without a reason, they report them (no cluster needed)."""

from __future__ import annotations

from typing import Any

from tests.chaos.faults import stuck_status
from tests.chaos.harness import (
    EXIT_NUDGE_SECONDS,
    ChaosRun,
    JobRecord,
    explained,
    gang_problems,
)


def pod(
    name: str,
    job: str,
    attempt: int | None,
    rank: int = 0,
    phase: str = "Running",
    node: str | None = "kwok-gpu-0",
    role: str = "worker",
    deleting: bool = False,
) -> dict[str, Any]:
    labels = {"kubetune.io/job-name": job, "kubetune.io/role": role}
    if attempt is not None:
        labels |= {"kubetune.io/attempt": str(attempt), "kubetune.io/rank": str(rank)}
    meta: dict[str, Any] = {"name": name, "uid": name, "labels": labels}
    if deleting:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": node}, "status": {"phase": phase}}


NODES = {"kwok-gpu-0", "kwok-gpu-1"}


def test_one_gang_with_leftovers_that_hold_nothing_is_no_duplicate() -> None:
    pods = [
        pod("j-a1-0", "j", 1, deleting=True),  # old gang being deleted
        pod("j-a1-1", "j", 1, 1, phase="Failed"),  # terminated
        pod("j-a1-2", "j", 1, 2, node="kwok-gpu-9"),  # on a node that is gone
        pod("j-a2-0", "j", 2),
        pod("j-a2-1", "j", 2, 1),
    ]
    assert gang_problems(pods, NODES, {"j": 2}) == []


def test_two_attempts_live_at_once_is_a_duplicate_gang() -> None:
    pods = [pod("j-a1-0", "j", 1), pod("j-a2-0", "j", 2, phase="Pending", node=None)]
    [(job, problem, names)] = gang_problems(pods, NODES, {"j": 1})
    assert job == "j" and "attempts [1, 2]" in problem and names == ["j-a1-0", "j-a2-0"]


def test_oversized_gang_duplicate_rank_and_two_validation_pods_are_reported() -> None:
    pods = [
        pod("j-a1-0", "j", 1, 0),
        pod("j-a1-0b", "j", 1, 0),
        pod("v-1", "j", None, role="validation"),
        pod("v-2", "j", None, role="validation"),
    ]
    problems = [p for _, p, _ in gang_problems(pods, NODES, {"j": 1})]
    assert problems == [
        "2 live pods of attempt 1 > 1",
        "two live pods of one rank in attempt 1",
        "2 live validation pods",
    ]


def test_a_phase_is_explained_only_by_its_own_conditions_with_reason_and_message() -> None:
    validated = {
        "type": "Validated",
        "status": "True",
        "reason": "ValidationPassed",
        "message": "ok",
    }
    assert explained({"phase": "Queued", "conditions": [validated]}) is None
    bare = {"type": "Admitted", "status": "False", "reason": "GangPending", "message": ""}
    assert explained({"phase": "Queued", "conditions": [validated, bare]}) is None
    full = {**bare, "message": "waiting for the gang to be placed: 0/2 placed"}
    assert explained({"phase": "Queued", "conditions": [full]}).startswith("Admitted=False")
    assert explained({}) is None  # never looked at by the operator


def test_stuck_status_keeps_kwok_off_and_shows_the_kubelet_reason() -> None:
    body = pod("j-a1-0", "j", 1, phase="Pending", node=None)
    body["spec"]["containers"] = [{"name": "trainer", "image": "x"}]
    body["status"]["conditions"] = [{"type": "PodScheduled", "status": "False"}]
    patch = stuck_status(body, "ImagePullBackOff")["status"]
    assert patch["phase"] == "Pending"
    assert {c["type"]: c["status"] for c in patch["conditions"]} == {
        "PodScheduled": "False",
        "Ready": "True",  # KWOK's pod-ready Stage selects Pending pods whose Ready is not True
    }
    [container] = patch["containerStatuses"]
    assert container["state"]["waiting"]["reason"] == "ImagePullBackOff"
    assert not container["ready"]


def test_a_pod_that_ignores_its_exit_annotation_is_told_again() -> None:
    """KWOK can miss the exit annotation's update across an etcd restart: the driver re-sends
    it (with a new nudge value, so the pod object changes) and counts the retry."""

    class Driver(ChaosRun):
        def __init__(self) -> None:  # no cluster: only what tell_exit uses
            self.clock, self.nudges = 0.0, 0
            self.patches: list[tuple[str, bool]] = []

        def now(self) -> float:
            return self.clock

        def annotate_exit(self, pod: dict[str, Any], code: int = 0, nudge: bool = False) -> bool:
            self.patches.append((pod["metadata"]["name"], nudge))
            return True

    driver = Driver()
    rec = JobRecord("j", nodes=1, gpus=2, created=0.0, run_for=1.0)
    p = pod("j-a1-0", "j", 1)
    driver.tell_exit(rec, p)
    driver.clock = EXIT_NUDGE_SECONDS - 1
    driver.tell_exit(rec, p)
    assert driver.patches == [("j-a1-0", False)], "told once while it may still be exiting"
    driver.clock = EXIT_NUDGE_SECONDS + 1
    driver.tell_exit(rec, p)
    assert driver.patches[-1] == ("j-a1-0", True) and driver.nudges == 1


def test_a_bound_pod_kwok_never_starts_is_nudged() -> None:
    """A pod bound to a node but never started (no container status) is nudged after the
    wait; a gated pod, one with container statuses (a pod_never_ready fault) or a running
    pod is not."""

    class Driver(ChaosRun):
        def __init__(self) -> None:  # no cluster: only what nudge_if_not_started uses
            self.clock, self.nudges, self.ns = 0.0, 0, "ns"
            self.unstarted: dict[str, float] = {}
            self.patched: list[str] = []
            self.api = self  # type: ignore[assignment]

        def now(self) -> float:
            return self.clock

        def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
            self.patched.append(path.rsplit("/", 1)[-1])
            return 200, {}

    driver = Driver()
    bound = pod("v-1", "j", None, phase="Pending", role="validation")
    gated = pod("g-1", "j", 1, phase="Pending")
    gated["spec"]["schedulingGates"] = [{"name": "kubetune.io/gang"}]
    stuck = pod("s-1", "j", 1, phase="Pending")
    stuck["status"]["containerStatuses"] = [{"state": {"waiting": {"reason": "X"}}}]
    running = pod("r-1", "j", 1)
    for p in (bound, gated, stuck, running):
        driver.nudge_if_not_started(p)
    driver.clock = EXIT_NUDGE_SECONDS + 1
    for p in (bound, gated, stuck, running):
        driver.nudge_if_not_started(p)
    assert driver.patched == ["v-1"] and driver.nudges == 1
