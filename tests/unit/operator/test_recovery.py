"""Recovery paths of the executor and the decisions: objects the job does not own are never
adopted, and every plan resumes after a crash at any point.

The controller runs against :class:`MemoryApi`, an in-memory API server with owner
references, uid preconditions and injectable failures (a crash of the operator half-way
through a plan is an error from the API followed by a fresh controller).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubetune_operator import naming
from kubetune_operator.controller import ChildConflictError, Controller
from kubetune_operator.kube import ApiError, KubeClient
from kubetune_operator.lifecycle import decide
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.observed import NodeView, Observed, PodView, format_time
from kubetune_operator.plan import ApplyConfigMap, CreatePod, EnsureService, Plan, UngatePod
from kubetune_operator.settings import OperatorSettings

from .conftest import fast_settings, job_manifest

NS = "team"
JOB_PATH = f"/apis/kubetune.io/v1alpha1/namespaces/{NS}/finetunejobs/tune"
CM_PATH = f"/api/v1/namespaces/{NS}/configmaps/tune-config"


class Crash(Exception):
    """The operator died here (raised by :class:`MemoryApi` on the chosen request)."""


class MemoryApi:
    """Just enough of an API server for the executor: objects by path, AlreadyExists,
    uid preconditions, merge patches, gate removal, and a crash on request number N."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.crash_at: int | None = None
        self._ids = itertools.count(1)
        self.now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

    # the KubeClient surface the controller uses
    path = staticmethod(KubeClient.path)

    def _count(self, method: str, path: str) -> None:
        self.requests.append((method, path))
        if self.crash_at is not None and len(self.requests) >= self.crash_at:
            self.crash_at = None
            raise Crash(f"crashed at {method} {path}")

    async def get(self, path: str) -> dict[str, Any]:
        self._count("GET", path)
        if path not in self.objects:
            raise ApiError(404, "NotFound", path)
        return copy.deepcopy(self.objects[path])

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        path = path.split("?", 1)[0]
        self._count("POST", path)
        full = f"{path}/{body['metadata']['name']}"
        if full in self.objects:
            raise ApiError(409, "AlreadyExists", f"{full} already exists")
        obj = copy.deepcopy(body)
        n = next(self._ids)
        obj["metadata"].setdefault("uid", f"obj-{n}")
        obj["metadata"]["resourceVersion"] = str(1000 + n)
        obj["metadata"]["creationTimestamp"] = format_time(self.now)
        if path.endswith("/pods"):
            obj["status"] = {"phase": "Pending"}
        self.objects[full] = obj
        return copy.deepcopy(obj)

    async def patch(self, path: str, body: Any, content_type: str = "") -> dict[str, Any]:
        self._count("PATCH", path)
        target = path[: -len("/status")] if path.endswith("/status") else path
        if target not in self.objects:
            raise ApiError(404, "NotFound", path)
        obj = self.objects[target]
        gates = (body.get("spec") or {}).get("schedulingGates")
        if gates and gates[0].get("$patch") == "delete":
            gone = {g["name"] for g in gates}
            obj["spec"]["schedulingGates"] = [
                g for g in obj["spec"].get("schedulingGates") or [] if g["name"] not in gone
            ]
        elif path.endswith("/status"):
            obj["status"] = _merge(obj.get("status") or {}, body["status"])
        else:
            for key, value in body.items():
                obj[key] = _merge(obj.get(key) or {}, value) if isinstance(value, dict) else value
        obj["metadata"]["resourceVersion"] = str(1000 + next(self._ids))
        return copy.deepcopy(obj)

    async def delete(self, path: str, *, uid: str | None = None, **_: Any) -> dict[str, Any]:
        self._count("DELETE", path)
        obj = self.objects.get(path)
        if obj is None:
            raise ApiError(404, "NotFound", path)
        if uid is not None and obj["metadata"].get("uid") != uid:
            raise ApiError(409, "Conflict", "uid precondition failed")
        del self.objects[path]
        return {"kind": "Status"}

    # views for the tests
    def pods(self) -> dict[str, dict[str, Any]]:
        prefix = f"/api/v1/namespaces/{NS}/pods/"
        return {k[len(prefix) :]: v for k, v in self.objects.items() if k.startswith(prefix)}


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def owner_ref(name: str, uid: str, kind: str = naming.KIND) -> dict[str, Any]:
    return {
        "apiVersion": naming.API_VERSION,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
    }


KEY = (NS, "tune")


def new_controller(api: MemoryApi, settings: OperatorSettings | None = None) -> Controller:
    """A fresh operator process: no memory of what an earlier one did."""
    return Controller(api, settings or fast_settings(), OperatorMetrics())  # type: ignore[arg-type]


def sync(api: MemoryApi, controller: Controller) -> None:
    """The watches caught up: the controller's indices show what the API server holds."""
    job = api.objects.get(JOB_PATH)
    controller.cache.jobs = {KEY: [copy.deepcopy(job)]} if job else {}
    controller.cache.pods = {
        KEY: [
            PodView.from_body(b)
            for b in api.pods().values()
            if (b["metadata"].get("labels") or {}).get(naming.LABEL_JOB) == "tune"
        ]
    }
    controller.cache.nodes = {
        f"gpu-{i}": [NodeView(f"gpu-{i}", True, api.now - timedelta(hours=1))] for i in range(4)
    }


def reconcile(api: MemoryApi, controller: Controller) -> Plan:
    """One reconcile of the job, as the controller's worker runs it (with a fixed clock)."""
    sync(api, controller)
    obs = controller.observe(KEY, now=api.now)
    assert obs is not None
    plan = decide(obs, controller.settings)

    async def go() -> None:
        try:
            await controller.execute(KEY, obs, plan)
        finally:
            await controller.drain()

    asyncio.run(go())
    return plan


def condition(api: MemoryApi, kind: str) -> dict[str, Any] | None:
    status = api.objects[JOB_PATH].get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), None)


def with_job(api: MemoryApi, **spec: Any) -> dict[str, Any]:
    job = job_manifest(**spec)
    api.objects[JOB_PATH] = job
    return job


# -- finding 4: "already exists" is not "ours" -----------------------------------------------
def test_foreign_config_map_is_neither_overwritten_nor_adopted() -> None:
    api = MemoryApi()
    with_job(api)
    api.objects[CM_PATH] = {
        "metadata": {
            "name": "tune-config",
            "namespace": NS,
            "uid": "cm-other",
            "ownerReferences": [owner_ref("someone-else", "uid-other")],
        },
        "data": {"keep": "me"},
    }
    controller = new_controller(api)
    with pytest.raises(ChildConflictError):
        reconcile(api, controller)
    assert api.objects[CM_PATH]["data"] == {"keep": "me"}, "someone else's data kept"
    assert not api.pods(), "nothing built on someone else's ConfigMap"
    # The next decision names it, and fails the job: waiting cannot help.
    reconcile(api, controller)
    failed = condition(api, "Failed")
    assert failed is not None and failed["reason"] == "ResourceConflict"
    assert f"ConfigMap {NS}/tune-config" in failed["message"]
    assert "someone-else" in failed["message"]
    assert api.objects[JOB_PATH]["status"]["phase"] == "Failed"
    assert api.objects[CM_PATH]["data"] == {"keep": "me"}
    assert CM_PATH in api.objects


def test_unowned_pod_under_a_gang_name_is_not_ungated_or_adopted() -> None:
    api = MemoryApi()
    with_job(api)
    controller = new_controller(api)
    pod_path = f"/api/v1/namespaces/{NS}/pods/tune-a1-1"
    api.objects[pod_path] = {
        "metadata": {"name": "tune-a1-1", "namespace": NS, "uid": "stranger"},
        "spec": {"schedulingGates": [{"name": naming.GANG_GATE}]},
    }
    obs = Observed(raw=copy.deepcopy(api.objects[JOB_PATH]))
    plan = Plan(
        actions=[
            CreatePod({"metadata": {"name": "tune-a1-0"}, "spec": {}}),
            CreatePod({"metadata": {"name": "tune-a1-1"}, "spec": {}}),
            UngatePod("tune-a1-0"),
            UngatePod("tune-a1-1"),
        ]
    )
    with pytest.raises(ChildConflictError):
        asyncio.run(controller.execute(KEY, obs, plan))
    assert api.objects[pod_path]["spec"]["schedulingGates"], "someone else's pod untouched"
    assert not [m for m, p in api.requests if m == "PATCH"], "no gate lifted on a partial gang"


def test_own_children_are_adopted_after_a_restart() -> None:
    api = MemoryApi()
    with_job(api)
    for path, name in (
        (CM_PATH, "tune-config"),
        (f"/api/v1/namespaces/{NS}/services/tune", "tune"),
    ):
        api.objects[path] = {
            "metadata": {
                "name": name,
                "namespace": NS,
                "uid": f"own-{name}",
                "ownerReferences": [owner_ref("tune", "uid-tune")],
            },
            "data": {"job.json": "old"},
        }
    controller = new_controller(api)
    plan = decide(Observed(raw=copy.deepcopy(api.objects[JOB_PATH])), controller.settings)
    cm = next(a for a in plan.actions if isinstance(a, ApplyConfigMap))
    svc = EnsureService({"metadata": {"name": "tune"}})
    obs = Observed(raw=copy.deepcopy(api.objects[JOB_PATH]))
    asyncio.run(controller.execute(KEY, obs, Plan(actions=[cm, svc])))
    assert api.objects[CM_PATH]["data"] == cm.body["data"], "our own ConfigMap is updated"
    assert not controller._conflicts


def test_leftovers_of_a_deleted_namesake_are_waited_for_then_replaced() -> None:
    api = MemoryApi()
    with_job(api)  # uid-tune; the earlier FineTuneJob "tune" had uid-old
    api.objects[CM_PATH] = {
        "metadata": {
            "name": "tune-config",
            "namespace": NS,
            "uid": "cm-old",
            "ownerReferences": [owner_ref("tune", "uid-old")],
        },
        "data": {"job.json": "{}"},
    }
    controller = new_controller(api)
    with pytest.raises(ChildConflictError):
        reconcile(api, controller)
    assert ("DELETE", CM_PATH) in api.requests, "the operator helps garbage collection"
    assert CM_PATH not in api.objects
    assert not api.pods()
    # The next reconcile says why it waits, and creates the job's own ConfigMap.
    plan = reconcile(api, controller)
    waiting = condition(api, "ResourceConflict")
    assert waiting is not None and waiting["reason"] == "WaitingForGarbageCollection"
    assert "tune-config" in waiting["message"] and "uid-old" in waiting["message"]
    assert plan.requeue_after is not None and plan.requeue_after <= 5
    owners = api.objects[CM_PATH]["metadata"]["ownerReferences"]
    assert [o["uid"] for o in owners] == ["uid-tune"]
    assert "tune-validate-1" in api.pods()
    # Nothing blocks any more: the condition goes, the job is not failed.
    reconcile(api, controller)
    assert condition(api, "ResourceConflict") is None
    assert condition(api, "Failed") is None
    assert api.objects[JOB_PATH]["status"]["phase"] == "Validating"


# -- finding 22: every plan resumes after a crash at any point ---------------------------------
def kubelet(api: MemoryApi) -> None:
    """Scheduler and kubelet: ungated worker pods are placed and run, validation passes."""
    for pod in list(api.pods().values()):
        labels = pod["metadata"].get("labels") or {}
        spec, status = pod["spec"], pod.setdefault("status", {})
        container = spec["containers"][0]["name"]
        if labels.get(naming.LABEL_ROLE) == naming.ROLE_VALIDATION:
            if status.get("phase") == "Pending":
                status["phase"] = "Succeeded"
                term = {"exitCode": 0, "reason": "Completed", "finishedAt": format_time(api.now)}
                status["containerStatuses"] = [{"name": container, "state": {"terminated": term}}]
            continue
        if spec.get("schedulingGates") or spec.get("nodeName"):
            continue
        spec["nodeName"] = f"gpu-{labels.get(naming.LABEL_RANK, '0')}"
        status.update(
            phase="Running",
            podIP="10.0.0.1",
            conditions=[{"type": "PodScheduled", "status": "True"}],
            containerStatuses=[
                {"name": container, "state": {"running": {"startedAt": format_time(api.now)}}}
            ],
        )


def drive(api: MemoryApi, controller: Controller, *, mode: str, rounds: int = 40) -> Controller:
    """Reconcile, let the cluster move and the clock run, until the operator is idle; a crash
    restarts the operator (mode "crash") or is an API error the same one retries ("error")."""
    idle = 0
    for _ in range(rounds):
        try:
            plan = reconcile(api, controller)
        except Crash:
            if mode == "crash":
                controller = new_controller(api)
            idle = 0
            continue
        kubelet(api)
        api.now += timedelta(seconds=6)
        idle = idle + 1 if plan.status is None and not plan.actions else 0
        if idle >= 3:
            break
    return controller


def gang_state(api: MemoryApi) -> dict[str, Any]:
    status = api.objects[JOB_PATH].get("status") or {}
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
    workers = {
        name: (pod["status"].get("phase"), bool(pod["spec"].get("schedulingGates")))
        for name, pod in api.pods().items()
        if (pod["metadata"].get("labels") or {}).get(naming.LABEL_ROLE) == naming.ROLE_WORKER
    }
    return {
        "phase": status.get("phase"),
        "attempts": status.get("attempts"),
        "restarting": conditions.get("Restarting"),
        "running": conditions.get("Running"),
        "workers": workers,
        "config": CM_PATH in api.objects,
    }


def running_job(api: MemoryApi) -> Controller:
    with_job(api)
    controller = drive(api, new_controller(api), mode="error")
    assert gang_state(api)["phase"] == "Running"
    return controller


def fail_rank(api: MemoryApi, rank: int) -> None:
    pod = api.pods()[f"tune-a1-{rank}"]
    container = pod["spec"]["containers"][0]["name"]
    term = {"exitCode": 1, "reason": "Error", "finishedAt": format_time(api.now)}
    pod["status"]["phase"] = "Failed"
    pod["status"]["containerStatuses"] = [{"name": container, "state": {"terminated": term}}]


def scenario_requests(start: Any, disturb: Any) -> tuple[dict[str, Any], int]:
    """The end state of a scenario without crashes, and how many API requests it made."""
    api = MemoryApi()
    controller = start(api)
    disturb(api)
    first = len(api.requests)
    drive(api, controller, mode="error")
    return gang_state(api), len(api.requests) - first


def suspend(api: MemoryApi) -> None:
    api.objects[JOB_PATH]["spec"]["runPolicy"]["suspend"] = True


SCENARIOS = {
    "new job to running": (lambda api: new_controller(api), with_job),
    "retryable failure restarts the gang": (running_job, lambda api: fail_rank(api, 1)),
    "suspend": (running_job, suspend),
}


@pytest.mark.parametrize("mode", ["crash", "error"])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_step_resumes_after_a_crash(name: str, mode: str) -> None:
    start, disturb = SCENARIOS[name]
    expected, total = scenario_requests(start, disturb)
    assert total > 3
    for crash_at in range(1, total + 1):
        api = MemoryApi()
        controller = start(api)
        disturb(api)
        api.crash_at = len(api.requests) + crash_at
        controller = drive(api, controller, mode=mode)
        assert gang_state(api) == expected, f"{name}: {mode} at request {crash_at}"
