"""The runtime pieces without a cluster: work queue, caches, leader election, the API
client (against a local aiohttp server), metrics and plan execution."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import generate_latest

from kubetune_operator import naming
from kubetune_operator.cache import Snapshot, newer_or_same
from kubetune_operator.controller import Controller
from kubetune_operator.kube import (
    STRATEGIC_MERGE_PATCH,
    ApiError,
    Credentials,
    KubeClient,
    _resource_of,
)
from kubetune_operator.leader import LeaderElector
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.observed import Observed, PodView
from kubetune_operator.plan import (
    ApplyConfigMap,
    CreatePod,
    DeletePod,
    EnsureService,
    Event,
    MetricEvent,
    Plan,
    UngatePod,
)
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.workqueue import WorkQueue


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- work queue --------------------------------------------------------------------------------
def test_workqueue_dedup_and_requeue_while_processing() -> None:
    async def scenario() -> list[str]:
        q: WorkQueue[str] = WorkQueue()
        q.add("a")
        q.add("a")
        q.add("b")
        assert len(q) == 2
        key = await q.get()
        q.add(key)  # event while processing: not handed to a second worker
        other = await q.get()
        assert {key, other} == {"a", "b"}
        q.done(key)  # re-queued once processing ends
        again = await asyncio.wait_for(q.get(), 1)
        q.done(other)
        q.done(again)
        return [key, other, again]

    order = run(scenario())
    assert order[2] == order[0]


def test_workqueue_add_after_keeps_earliest() -> None:
    async def scenario() -> float:
        q: WorkQueue[str] = WorkQueue()
        loop = asyncio.get_running_loop()
        start = loop.time()
        q.add_after("k", 5)
        q.add_after("k", 0.05)
        q.add_after("k", 3)
        await asyncio.wait_for(q.get(), 1)
        q.close()
        return loop.time() - start

    assert run(scenario()) < 1


def test_workqueue_rate_limit() -> None:
    async def scenario() -> list[float]:
        q: WorkQueue[str] = WorkQueue()
        delays = [q.add_rate_limited("k", base=1, cap=4) for _ in range(4)]
        q.forget("k")
        delays.append(q.add_rate_limited("k", base=1, cap=4))
        q.close()
        return delays

    assert run(scenario()) == [1, 2, 4, 4, 1]


# -- cache overlays ----------------------------------------------------------------------------
def pod_body(name: str, rv: str, phase: str = "Pending", job: str = "j") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "uid": f"u-{name}",
            "resourceVersion": rv,
            "labels": {"kubetune.io/job-name": job, "kubetune.io/role": "worker"},
        },
        "status": {"phase": phase},
    }


def test_resource_versions() -> None:
    assert newer_or_same("12", "9") and newer_or_same("9", "9") and not newer_or_same("9", "12")
    assert not newer_or_same("abc", "abd") and newer_or_same("abc", "abc")


def test_overlay_until_watch_catches_up() -> None:
    snap = Snapshot()
    indexed: dict[tuple[str, str], list[Any]] = {("ns", "j"): []}
    snap.pods = indexed
    snap.wrote_pod("ns", pod_body("p", "10"))
    assert [p.name for p in snap.pods_of(("ns", "j"))] == ["p"], "own create visible at once"
    indexed[("ns", "j")] = [PodView.from_body(pod_body("p", "9", "Pending"))]
    assert snap.pods_of(("ns", "j"))[0].resource_version == "10", "stale index loses"
    indexed[("ns", "j")] = [PodView.from_body(pod_body("p", "11", "Running"))]
    assert snap.pods_of(("ns", "j"))[0].phase == "Running"
    snap.wrote_pod("ns", pod_body("q", "12"))
    snap.pod_deleted("ns", "q")
    assert [p.name for p in snap.pods_of(("ns", "j"))] == ["p"]


def test_job_overlay() -> None:
    snap = Snapshot()
    body = {"metadata": {"name": "j", "resourceVersion": "5"}, "status": {}}
    jobs: dict[tuple[str, str], list[Any]] = {("ns", "j"): [body]}
    snap.jobs = jobs
    snap.wrote_job(("ns", "j"), {**body, "metadata": {"resourceVersion": "6"}, "status": {"x": 1}})
    assert snap.job(("ns", "j"))["status"] == {"x": 1}  # type: ignore[index]
    jobs[("ns", "j")] = [{**body, "metadata": {"resourceVersion": "7"}, "status": {"y": 2}}]
    assert snap.job(("ns", "j"))["status"] == {"y": 2}  # type: ignore[index]
    jobs.pop(("ns", "j"))
    assert snap.job(("ns", "j")) is None


# -- a fake API server -------------------------------------------------------------------------
def strategic_merge(current: Any, patch: Any) -> Any:
    """The part of a strategic merge patch we use: nested maps merge, and a list entry
    ``{"$patch": "delete", "name": n}`` removes the entry named ``n`` (merge key name)."""
    if isinstance(current, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(current)
        for key, value in patch.items():
            merged[key] = strategic_merge(current.get(key), value)
        return merged
    if isinstance(current, list) and isinstance(patch, list):
        doomed = {e["name"] for e in patch if isinstance(e, dict) and e.get("$patch") == "delete"}
        if doomed:
            return [e for e in current if not (isinstance(e, dict) and e.get("name") in doomed)]
    return copy.deepcopy(patch)


class FakeApi:
    """Just enough of the API server: objects by path, resourceVersion conflicts."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.rv = 100
        self.requests: list[tuple[str, str]] = []
        self.fail: dict[tuple[str, str], int] = {}
        self.patches: list[tuple[str, str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path
        method = request.method
        self.requests.append((method, path))
        if (method, path) in self.fail:
            code = self.fail[(method, path)]
            return web.json_response({"reason": "Boom", "message": "injected"}, status=code)
        body = await request.json() if request.can_read_body else None
        if method == "GET":
            if path not in self.objects:
                return web.json_response({"reason": "NotFound", "message": "nf"}, status=404)
            return web.json_response(self.objects[path])
        if method == "POST":
            name = body["metadata"]["name"]
            full = f"{path}/{name}"
            if full in self.objects:
                return web.json_response(
                    {"reason": "AlreadyExists", "message": "exists"}, status=409
                )
            self.rv += 1
            body["metadata"]["resourceVersion"] = str(self.rv)
            body["metadata"].setdefault("uid", f"uid-{self.rv}")
            self.objects[full] = body
            return web.json_response(body, status=201)
        if method == "PUT":
            current = self.objects.get(path)
            if current is None:
                return web.json_response({"reason": "NotFound", "message": "nf"}, status=404)
            if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                return web.json_response({"reason": "Conflict", "message": "rv"}, status=409)
            self.rv += 1
            body["metadata"]["resourceVersion"] = str(self.rv)
            self.objects[path] = body
            return web.json_response(body)
        if method == "PATCH":
            target = path[: -len("/status")] if path.endswith("/status") else path
            current = self.objects.get(target)
            if current is None:
                return web.json_response({"reason": "NotFound", "message": "nf"}, status=404)
            content_type = request.headers.get("Content-Type", "")
            self.patches.append((path, content_type, copy.deepcopy(body)))
            expected = ((body or {}).get("metadata") or {}).get("resourceVersion")
            if expected and expected != current["metadata"].get("resourceVersion"):
                return web.json_response({"reason": "Conflict", "message": "rv"}, status=409)
            if content_type.startswith(STRATEGIC_MERGE_PATCH):
                merged = strategic_merge(current, body)
            else:
                merged = copy.deepcopy(current)
                for key, value in body.items():
                    if isinstance(value, dict):
                        merged.setdefault(key, {}).update(value)
                    else:
                        merged[key] = value
            self.rv += 1
            merged["metadata"]["resourceVersion"] = str(self.rv)
            self.objects[target] = merged
            return web.json_response(merged)
        if method == "DELETE":
            obj = self.objects.pop(path, None)
            if obj is None:
                return web.json_response({"reason": "NotFound", "message": "nf"}, status=404)
            return web.json_response(obj)
        return web.json_response({}, status=405)


async def with_api(fn: Callable[[KubeClient, FakeApi], Any]) -> Any:
    api = FakeApi()
    runner = web.AppRunner(api.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = KubeClient(Credentials(server=f"http://127.0.0.1:{port}", token=lambda: "Bearer t"))
    try:
        return await fn(client, api)
    finally:
        await client.close()
        await runner.cleanup()


def test_client_errors_and_counts() -> None:
    async def scenario(client: KubeClient, api: FakeApi) -> None:
        path = client.path("pods", "ns")
        created = await client.create(path, {"metadata": {"name": "p"}})
        assert created["metadata"]["resourceVersion"]
        with pytest.raises(ApiError) as err:
            await client.create(path, {"metadata": {"name": "p"}})
        assert err.value.already_exists
        with pytest.raises(ApiError) as err:
            await client.get(client.path("pods", "ns", "missing"))
        assert err.value.not_found
        assert client.counts[("post", "pods", 201)] == 1
        assert client.counts[("post", "pods", 409)] == 1

    run(with_api(scenario))


def test_resource_of() -> None:
    assert _resource_of("/api/v1/namespaces/a/pods/x") == "pods"
    assert _resource_of("/apis/kubetune.io/v1alpha1/namespaces/a/finetunejobs/x/status") == (
        "finetunejobs/status"
    )
    assert _resource_of("/api/v1/nodes") == "nodes"
    assert KubeClient.path("leases", "s", "l", group="coordination.k8s.io") == (
        "/apis/coordination.k8s.io/v1/namespaces/s/leases/l"
    )


# -- leader election ---------------------------------------------------------------------------
def elector_settings(identity: str) -> OperatorSettings:
    return OperatorSettings(
        identity=identity,
        lease_namespace="sys",
        lease_duration_seconds=10,
        renew_deadline_seconds=5,
        retry_period_seconds=0.01,
    )


def test_only_one_leader_and_takeover_after_expiry() -> None:
    async def scenario(client: KubeClient, api: FakeApi) -> None:
        clock = {"t": 0.0}
        a = LeaderElector(client, elector_settings("a"), clock=lambda: clock["t"])
        b = LeaderElector(client, elector_settings("b"), clock=lambda: clock["t"])
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()
        clock["t"] = 5
        assert await a.try_acquire_or_renew(), "renew"
        assert not await b.try_acquire_or_renew()
        clock["t"] = 14  # b saw a's renewal at t=5; not expired before t=15
        assert not await b.try_acquire_or_renew()
        clock["t"] = 16
        assert await b.try_acquire_or_renew(), "a stopped renewing: b takes over"
        lease = next(v for k, v in api.objects.items() if k.endswith("/leases/kubetune-operator"))
        assert lease["spec"]["holderIdentity"] == "b"
        assert lease["spec"]["leaseTransitions"] == 1
        assert not await a.try_acquire_or_renew()

    run(with_api(scenario))


def test_release_hands_over_immediately() -> None:
    async def scenario(client: KubeClient, api: FakeApi) -> None:
        a = LeaderElector(client, elector_settings("a"))
        b = LeaderElector(client, elector_settings("b"))
        stop = asyncio.Event()
        assert await a.acquire(stop)
        assert not await b.try_acquire_or_renew()
        await a.release()
        assert await b.try_acquire_or_renew()

    run(with_api(scenario))


def test_lost_lease_signals_stop() -> None:
    async def scenario(client: KubeClient, api: FakeApi) -> None:
        a = LeaderElector(client, elector_settings("a"))
        stop = asyncio.Event()
        assert await a.acquire(stop)
        path = next(k for k in api.objects if k.endswith("/leases/kubetune-operator"))
        api.objects[path]["spec"]["holderIdentity"] = "intruder"
        api.objects[path]["spec"]["leaseDurationSeconds"] = 3600
        settings = a.settings.model_copy(update={"renew_deadline_seconds": 0.05})
        a.settings = settings
        await asyncio.wait_for(a.hold(stop), 2)
        assert stop.is_set() and a.lost

    run(with_api(scenario))


# -- metrics -----------------------------------------------------------------------------------
def test_metrics_names_and_values() -> None:
    m = OperatorMetrics()
    m.watch_jobs(lambda: [("ns", "Running"), ("ns", "Running"), ("ns", "Queued")])
    m.record(
        [
            MetricEvent("transition", "Running"),
            MetricEvent("restart", "NodeLost"),
            MetricEvent("failure", "InvalidData"),
            MetricEvent("time_to_running", value=12.0),
        ],
        namespace="ns",
    )
    m.record_gpu_time("ns", "", "job", 0.0, 0.0, None)  # the baseline
    m.record_gpu_time("ns", "", "job", 16.0, 8.0, None)
    text = generate_latest(m.registry).decode()
    for line in (
        'kubetune_jobs{namespace="ns",phase="Running"} 2.0',
        'kubetune_jobs{namespace="ns",phase="Queued"} 1.0',
        'kubetune_job_transitions_total{phase="Running"} 1.0',
        'kubetune_job_restarts_total{namespace="ns",reason="NodeLost"} 1.0',
        'kubetune_job_failures_total{reason="InvalidData"} 1.0',
        "kubetune_job_time_to_running_seconds_count 1.0",
        'kubetune_gpu_allocated_seconds_total{namespace="ns",queue=""} 16.0',
        'kubetune_gpu_productive_seconds_total{namespace="ns",queue=""} 8.0',
        "kubetune_reconcile_duration_seconds_bucket",
    ):
        assert line in text


# -- executing plans ---------------------------------------------------------------------------
def test_execute_plan_status_first_then_idempotent_actions() -> None:
    async def scenario(client: KubeClient, api: FakeApi) -> None:
        settings = OperatorSettings(leader_election=False, identity="t")
        controller = Controller(client, settings, OperatorMetrics())
        job_path = "/apis/kubetune.io/v1alpha1/namespaces/ns/finetunejobs/j"
        job = {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "j", "namespace": "ns", "uid": "uid-j", "resourceVersion": "1"},
            "spec": {},
        }
        api.objects[job_path] = copy.deepcopy(job)
        existing = {
            "metadata": {
                "name": "j-a1-1",
                "uid": "x",
                "resourceVersion": "2",
                # Ours (a retried plan): AlreadyExists is fine only for what the job owns.
                "ownerReferences": [
                    {"kind": "FineTuneJob", "name": "j", "uid": "uid-j", "controller": True}
                ],
            }
        }
        api.objects["/api/v1/namespaces/ns/pods/j-a1-1"] = existing
        pod = {
            "metadata": {
                "name": "j-a1-0",
                "labels": {"kubetune.io/job-name": "j"},
                "ownerReferences": existing["metadata"]["ownerReferences"],
            },
            "spec": {"schedulingGates": [{"name": naming.GANG_GATE}, {"name": "other.io/gate"}]},
        }
        plan = Plan(
            status={"phase": "Queued"},
            actions=[
                ApplyConfigMap({"metadata": {"name": "j-config"}, "data": {"job.json": "{}"}}),
                EnsureService({"metadata": {"name": "j"}}),
                CreatePod(pod),
                CreatePod({"metadata": {"name": "j-a1-1"}}),  # AlreadyExists: fine
            ],
            events=[Event("Normal", "Queued", "created")],
            metrics=[MetricEvent("transition", "Queued")],
        )
        obs = Observed(raw=job)
        await controller.execute(("ns", "j"), obs, plan)
        await controller.drain()
        order = [r for r in api.requests if r[0] != "GET"]
        pods_at = min(i for i, r in enumerate(order) if r[1].endswith("/pods"))
        assert ("PATCH", job_path + "/status") in order[:pods_at], "status with the prelude"
        assert api.objects[job_path]["status"] == {"phase": "Queued"}
        assert "/api/v1/namespaces/ns/pods/j-a1-0" in api.objects
        assert any(k.startswith("/api/v1/namespaces/ns/events/j.") for k in api.objects)
        assert controller.cache._job_overlay.resolve(("ns", "j"), None) is not None
        # Repeating the plan: ConfigMap and Service are skipped, pods AlreadyExist (and are
        # read once to check that they are the job's own).
        api.requests.clear()
        await controller.execute(("ns", "j"), obs, Plan(actions=plan.actions[:3]))
        assert [m for m, p in api.requests] == ["POST", "GET"]
        # Ungate and delete.
        await controller.execute(
            ("ns", "j"),
            obs,
            Plan(actions=[UngatePod("j-a1-0"), DeletePod("j-a1-1", "x"), DeletePod("gone", "y")]),
        )
        assert "/api/v1/namespaces/ns/pods/j-a1-1" not in api.objects
        # The gang gate (only ours) is removed by a strategic merge patch of that pod.
        ungated = "/api/v1/namespaces/ns/pods/j-a1-0"
        assert [(p, t) for p, t, _ in api.patches if p == ungated] == [
            (ungated, STRATEGIC_MERGE_PATCH)
        ]
        assert api.objects[ungated]["spec"]["schedulingGates"] == [{"name": "other.io/gate"}]

    run(with_api(scenario))


def test_failed_create_posts_warning_and_raises() -> None:
    async def scenario(client: KubeClient, api: FakeApi) -> None:
        controller = Controller(
            client, OperatorSettings(leader_election=False, identity="t"), OperatorMetrics()
        )
        api.fail[("POST", "/api/v1/namespaces/ns/pods")] = 403
        job = {"metadata": {"name": "j", "namespace": "ns", "uid": "u"}}
        with pytest.raises(ApiError):
            await controller.execute(
                ("ns", "j"),
                Observed(raw=job),
                Plan(actions=[CreatePod({"metadata": {"name": "p"}})]),
            )
        await controller.drain()
        events = [v for k, v in api.objects.items() if "/events/" in k]
        assert events and events[0]["reason"] == "FailedCreate"

    run(with_api(scenario))


def test_cosmetic_status_changes_are_coalesced() -> None:
    from kubetune_operator.controller import material

    before = {
        "phase": "Queued",
        "progress": {"summary": "queued: 0/2 placed"},
        "conditions": [{"type": "Admitted", "status": "Unknown", "reason": "GangCreated"}],
    }
    cosmetic = {
        "phase": "Queued",
        "progress": {"summary": "queued: 1/2 placed"},
        "conditions": [{"type": "Admitted", "status": "Unknown", "reason": "GangPending"}],
    }
    assert material(before) == material(cosmetic)
    placed = {
        **cosmetic,
        "conditions": [{"type": "Admitted", "status": "True", "reason": "GangScheduled"}],
    }
    assert material(before) == material(placed), "placement alone can wait a moment"
    running = {**cosmetic, "phase": "Running"}
    assert material(before) != material(running)

    async def scenario(client: KubeClient, api: FakeApi) -> None:
        controller = Controller(
            client, OperatorSettings(leader_election=False, identity="t"), OperatorMetrics()
        )
        key = ("ns", "j")
        obs = Observed(raw={"metadata": {"name": "j", "namespace": "ns"}, "status": before})
        controller._last_status_write[key] = __import__("time").monotonic()
        assert controller._defer_cosmetic(key, obs, Plan(status=cosmetic)) is not None
        assert controller._defer_cosmetic(key, obs, Plan(status=running)) is None
        controller._last_status_write[key] = 0.0
        assert controller._defer_cosmetic(key, obs, Plan(status=cosmetic)) is None

    run(with_api(scenario))


def test_destructive_plans_write_status_first() -> None:
    async def scenario(client: KubeClient, api: FakeApi) -> None:
        controller = Controller(
            client, OperatorSettings(leader_election=False, identity="t"), OperatorMetrics()
        )
        job_path = "/apis/kubetune.io/v1alpha1/namespaces/ns/finetunejobs/j"
        job = {"metadata": {"name": "j", "namespace": "ns", "uid": "u", "resourceVersion": "1"}}
        api.objects[job_path] = copy.deepcopy(job)
        api.objects["/api/v1/namespaces/ns/pods/p"] = {"metadata": {"name": "p", "uid": "x"}}
        plan = Plan(status={"phase": "Queued"}, actions=[DeletePod("p", "x")])
        await controller.execute(("ns", "j"), Observed(raw=job), plan)
        assert [m for m, _ in api.requests] == ["PATCH", "DELETE"]
        # The job is gone: nothing else happens.
        del api.objects[job_path]
        api.requests.clear()
        api.objects["/api/v1/namespaces/ns/pods/q"] = {"metadata": {"name": "q", "uid": "y"}}
        await controller.execute(
            ("ns", "j"),
            Observed(raw=job),
            Plan(status={"phase": "Failed"}, actions=[DeletePod("q", "y")]),
        )
        assert [m for m, _ in api.requests] == ["PATCH"]

    run(with_api(scenario))


def test_status_writes_are_fenced_by_resource_version() -> None:
    """A deposed leader decides on an old view of the job: its status write carries that
    view's resourceVersion, so the API server refuses it once the successor has written, and
    the plan's deletions never happen. The refused writer reads the job as it is now."""

    async def scenario(client: KubeClient, api: FakeApi) -> None:
        controller = Controller(
            client, OperatorSettings(leader_election=False, identity="old"), OperatorMetrics()
        )
        job_path = "/apis/kubetune.io/v1alpha1/namespaces/ns/finetunejobs/j"
        stale = {"metadata": {"name": "j", "namespace": "ns", "uid": "u", "resourceVersion": "1"}}
        api.objects[job_path] = copy.deepcopy(stale)
        api.objects["/api/v1/namespaces/ns/pods/p"] = {"metadata": {"name": "p", "uid": "x"}}
        # The new leader writes first (the object moves on to resourceVersion 101).
        successor = copy.deepcopy(api.objects[job_path])
        successor["status"] = {"phase": "Running", "attempts": 2}
        api.rv += 1
        successor["metadata"]["resourceVersion"] = str(api.rv)
        api.objects[job_path] = successor
        plan = Plan(status={"phase": "Queued", "attempts": 3}, actions=[DeletePod("p", "x")])
        with pytest.raises(ApiError) as refused:
            await controller.execute(("ns", "j"), Observed(raw=stale), plan)
        assert refused.value.conflict
        assert api.objects[job_path]["status"] == {"phase": "Running", "attempts": 2}
        assert "/api/v1/namespaces/ns/pods/p" in api.objects, "no delete after a refused write"
        sent = [b for p, _, b in api.patches if p == job_path + "/status"]
        assert sent and sent[0]["metadata"] == {"resourceVersion": "1"}
        fresh = controller.cache._job_overlay.resolve(("ns", "j"), None)
        assert fresh is not None and fresh["status"]["attempts"] == 2
        # Decided on the current object, the same write goes through.
        await controller.execute(("ns", "j"), Observed(raw=fresh), plan)
        assert api.objects[job_path]["status"]["attempts"] == 3
        assert "/api/v1/namespaces/ns/pods/p" not in api.objects

    run(with_api(scenario))


def test_no_visible_nodes_is_unknown_not_lost() -> None:
    snap = Snapshot()
    assert snap.node_map() is None
    snap.nodes = {}
    assert snap.node_map() is None, "an empty node index must not mark every pod NodeLost"
