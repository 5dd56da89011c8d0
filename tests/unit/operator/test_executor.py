"""The executor (``Controller.execute``) on the wire, and the decisions whose faults no
other test caught (issue 9, items 23 and 25).

The controller talks through the real :class:`~kubetune_operator.kube.KubeClient` to
:class:`WireApi`, a local HTTP server that records every request with its body and
behaves like the API server where it matters here: uid preconditions on delete (409),
graceful deletes that only mark a pod (no kubelet confirms them on a lost node) against
``gracePeriodSeconds: 0`` that removes it, strategic-merge gate removal, JSON merge
patches and AlreadyExists.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiohttp import web

from kubetune_operator import naming
from kubetune_operator.controller import Controller
from kubetune_operator.failures import MAX_MESSAGE as FAILURE_MAX
from kubetune_operator.kube import MERGE_PATCH, STRATEGIC_MERGE_PATCH, Credentials, KubeClient
from kubetune_operator.lifecycle import decide
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.observed import NodeView, PodView, format_time
from kubetune_operator.plan import (
    ApplyConfigMap,
    DeleteJob,
    DeletePod,
    EnsureWorkload,
    Plan,
    UngatePod,
)
from kubetune_operator.progress import SUMMARY_MAX, step_summary
from kubetune_operator.queueing import FlavorView, WorkloadView
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.status import MAX_MESSAGE as STATUS_MAX

from .conftest import T0, FakeCluster, fast_settings, job_manifest

NS = "team"
KEY = (NS, "tune")
JOB_PATH = f"/apis/kubetune.io/v1alpha1/namespaces/{NS}/finetunejobs/tune"
PODS = f"/api/v1/namespaces/{NS}/pods"
CM_PATH = f"/api/v1/namespaces/{NS}/configmaps/tune-config"
GATE_REMOVAL = {"spec": {"schedulingGates": [{"$patch": "delete", "name": naming.GANG_GATE}]}}


@dataclass
class Request:
    method: str
    path: str
    content_type: str
    body: Any


def _merge(base: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


def _error(status: int, reason: str, message: str) -> web.Response:
    return web.json_response(
        {"kind": "Status", "status": "Failure", "reason": reason, "message": message},
        status=status,
    )


class WireApi:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.requests: list[Request] = []
        self._rv = itertools.count(1000)
        self._uid = itertools.count(1)
        self.now = T0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        path = request.path
        self.requests.append(
            Request(request.method, path, request.headers.get("Content-Type", ""), body)
        )
        handler = getattr(self, f"_{request.method.lower()}")
        response: web.Response = handler(path, body)
        return response

    def _get(self, path: str, body: Any) -> web.Response:
        if path not in self.objects:
            return _error(404, "NotFound", f"{path} not found")
        return web.json_response(self.objects[path])

    def _post(self, path: str, body: Any) -> web.Response:
        full = f"{path}/{body['metadata']['name']}"
        if full in self.objects:
            return _error(409, "AlreadyExists", f"{full} already exists")
        obj = copy.deepcopy(body)
        obj["metadata"].setdefault("uid", f"obj-{next(self._uid)}")
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        obj["metadata"]["creationTimestamp"] = format_time(self.now)
        if path.endswith("/pods"):
            gated = bool(obj["spec"].get("schedulingGates"))
            obj["status"] = {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "SchedulingGated" if gated else "Unschedulable",
                    }
                ],
            }
        self.objects[full] = obj
        return web.json_response(obj, status=201)

    def _patch(self, path: str, body: Any) -> web.Response:
        status = path.endswith("/status")
        target = path.removesuffix("/status")
        obj = self.objects.get(target)
        if obj is None:
            return _error(404, "NotFound", f"{target} not found")
        content_type = self.requests[-1].content_type
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if rv is not None and rv != obj["metadata"]["resourceVersion"]:
            return _error(409, "Conflict", "the object has been modified")
        if content_type == STRATEGIC_MERGE_PATCH:
            gates = body["spec"]["schedulingGates"]
            gone = {g["name"] for g in gates if g.get("$patch") == "delete"}
            assert len(gone) == len(gates), "only gate deletions are expected"
            obj["spec"]["schedulingGates"] = [
                g for g in obj["spec"].get("schedulingGates") or [] if g["name"] not in gone
            ]
        else:
            assert content_type == MERGE_PATCH, content_type
            if status:  # the status subresource ignores everything but status
                obj["status"] = _merge(obj.get("status"), body.get("status"))
            else:
                meta = obj["metadata"]
                obj.update(_merge(obj, {k: v for k, v in body.items() if k != "metadata"}))
                obj["metadata"] = _merge(meta, body.get("metadata") or {})
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        return web.json_response(obj)

    def _delete(self, path: str, body: Any) -> web.Response:
        obj = self.objects.get(path)
        if obj is None:
            return _error(404, "NotFound", f"{path} not found")
        options = body or {}
        uid = (options.get("preconditions") or {}).get("uid")
        if uid is not None and uid != obj["metadata"]["uid"]:
            return _error(
                409,
                "Conflict",
                f"Precondition failed: UID in precondition: {uid}, "
                f"UID in object meta: {obj['metadata']['uid']}",
            )
        graceful = options.get("gracePeriodSeconds") != 0
        if path.startswith(PODS) and graceful and obj.get("spec", {}).get("nodeName"):
            # A bound pod terminates gracefully: its kubelet confirms the deletion later
            # (never, if its node is gone).
            obj["metadata"].setdefault("deletionTimestamp", format_time(self.now))
            obj["metadata"]["resourceVersion"] = str(next(self._rv))
            return web.json_response(obj)
        del self.objects[path]
        return web.json_response({"kind": "Status", "status": "Success"})

    # -- views ---------------------------------------------------------------------------------
    def pods(self) -> dict[str, dict[str, Any]]:
        prefix = PODS + "/"
        return {k[len(prefix) :]: v for k, v in self.objects.items() if k.startswith(prefix)}

    def sent(self, method: str, prefix: str = "") -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path.startswith(prefix)]


class Harness:
    """A controller (the real KubeClient) against :class:`WireApi`; the test plays the
    watches (:meth:`sync`), the clock and the kubelet."""

    def __init__(self, api: WireApi, settings: OperatorSettings) -> None:
        self.api = api
        self.settings = settings
        self.nodes = {f"gpu-{i}": NodeView(f"gpu-{i}", True, T0) for i in range(4)}
        self._seen: set[str] = set()
        self.client: KubeClient | None = None
        self.controller: Controller | None = None

    def sync(self) -> Controller:
        controller = self.controller
        assert controller is not None
        job = self.api.objects.get(JOB_PATH)
        controller.cache.jobs = {KEY: [copy.deepcopy(job)]} if job else {}
        pods = self.api.pods()
        for gone in self._seen - set(pods):
            controller.pod_event("DELETED", NS, gone, "tune")
        self._seen = set(pods)
        controller.cache.pods = {KEY: [PodView.from_body(b) for b in pods.values()]}
        controller.cache.nodes = {name: [view] for name, view in self.nodes.items()}
        return controller

    async def reconcile(self) -> Plan:
        """One reconcile as the worker runs it, at the API's clock."""
        controller = self.sync()
        obs = controller.observe(KEY, now=self.api.now)
        assert obs is not None
        plan = decide(obs, self.settings)
        await controller.execute(KEY, obs, plan)
        await controller.drain()
        return plan

    async def execute(self, plan: Plan) -> None:
        controller = self.sync()
        obs = controller.observe(KEY, now=self.api.now)
        assert obs is not None
        await controller.execute(KEY, obs, plan)
        await controller.drain()


def on_wire(
    scenario: Callable[[WireApi, Harness], Awaitable[None]],
    settings: OperatorSettings | None = None,
) -> None:
    async def main() -> None:
        api = WireApi()
        runner = web.AppRunner(api.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        harness = Harness(api, settings or fast_settings())
        client = KubeClient(Credentials(server=f"http://127.0.0.1:{port}"))
        harness.client = client
        harness.controller = Controller(client, harness.settings, OperatorMetrics())
        try:
            await scenario(api, harness)
        finally:
            await client.close()
            await runner.cleanup()

    asyncio.run(main())


def load(api: WireApi, cluster: FakeCluster) -> None:
    """Put a :class:`FakeCluster`'s job and pods on the server (its state, our wire)."""
    assert cluster.job is not None
    api.objects[JOB_PATH] = copy.deepcopy(cluster.job)
    for name, body in cluster.pods.items():
        api.objects[f"{PODS}/{name}"] = copy.deepcopy(body)
    api.now = cluster.now


def condition(cluster: FakeCluster, kind: str) -> dict[str, Any]:
    found = cluster.condition(kind)
    assert found is not None, f"no {kind} condition"
    return found


def delete_options(request: Request) -> dict[str, Any]:
    body = dict(request.body)
    assert (body.pop("apiVersion"), body.pop("kind")) == ("v1", "DeleteOptions")
    return body


# -- delete preconditions ------------------------------------------------------------------------
def test_pod_deletes_carry_the_uid_precondition() -> None:
    async def scenario(api: WireApi, h: Harness) -> None:
        api.objects[JOB_PATH] = job_manifest()
        api.objects[f"{PODS}/tune-a1-0"] = {
            "metadata": {"name": "tune-a1-0", "namespace": NS, "uid": "pod-old"},
            "spec": {},
        }
        # The pod was re-created under the same name since the plan was made.
        api.objects[f"{PODS}/tune-a1-1"] = {
            "metadata": {"name": "tune-a1-1", "namespace": NS, "uid": "pod-new"},
            "spec": {},
        }
        await h.execute(
            Plan(actions=[DeletePod("tune-a1-0", "pod-old"), DeletePod("tune-a1-1", "pod-old-1")])
        )
        deletes = {r.path.rsplit("/", 1)[-1]: delete_options(r) for r in api.sent("DELETE")}
        assert deletes == {
            "tune-a1-0": {"preconditions": {"uid": "pod-old"}, "propagationPolicy": "Background"},
            "tune-a1-1": {
                "preconditions": {"uid": "pod-old-1"},
                "propagationPolicy": "Background",
            },
        }
        assert "tune-a1-0" not in api.pods()
        assert api.pods()["tune-a1-1"]["metadata"]["uid"] == "pod-new", "the newcomer survives"

    on_wire(scenario)


def test_ttl_deletion_of_the_job_carries_the_uid_precondition() -> None:
    async def scenario(api: WireApi, h: Harness) -> None:
        api.objects[JOB_PATH] = job_manifest()  # uid-tune: a namesake of the finished job
        await h.execute(Plan(actions=[DeleteJob("uid-finished")]))
        (request,) = api.sent("DELETE")
        assert request.path == JOB_PATH
        assert delete_options(request)["preconditions"] == {"uid": "uid-finished"}
        assert JOB_PATH in api.objects, "the namesake is not deleted"

    on_wire(scenario)


# -- force delete ----------------------------------------------------------------------------------
def test_pods_on_a_lost_node_are_force_deleted_the_others_gracefully() -> None:
    cluster = FakeCluster(job_manifest())
    cluster.start_running()
    lost = cluster.pods["tune-a1-1"]["spec"]["nodeName"]
    healthy = cluster.pods["tune-a1-0"]["spec"]["nodeName"]
    assert lost != healthy

    async def scenario(api: WireApi, h: Harness) -> None:
        load(api, cluster)
        uids = {n: p["metadata"]["uid"] for n, p in api.pods().items()}
        del h.nodes[lost]
        api.requests.clear()
        await h.reconcile()
        deletes = {r.path.rsplit("/", 1)[-1]: delete_options(r) for r in api.sent("DELETE")}
        assert deletes["tune-a1-1"] == {
            "preconditions": {"uid": uids["tune-a1-1"]},
            "gracePeriodSeconds": 0,
            "propagationPolicy": "Background",
        }, "no kubelet will confirm: forced, still uid-guarded"
        assert deletes["tune-a1-0"] == {
            "preconditions": {"uid": uids["tune-a1-0"]},
            "propagationPolicy": "Background",
        }, "a healthy node's pod may shut down gracefully (final checkpoint)"
        # Status first (the record of the intent), then the deletes.
        methods = [r.method for r in api.requests]
        assert methods.index("PATCH") < methods.index("DELETE")
        assert "tune-a1-1" not in api.pods(), "gone at once, not terminating forever"
        assert api.pods()["tune-a1-0"]["metadata"].get("deletionTimestamp")
        assert api.objects[JOB_PATH]["status"]["conditions"]
        restarting = next(
            c for c in api.objects[JOB_PATH]["status"]["conditions"] if c["type"] == "Restarting"
        )
        assert restarting["reason"] == "NodeLost"

    on_wire(scenario)


# -- gate removal ----------------------------------------------------------------------------------
def validation_passes(api: WireApi) -> None:
    for pod in api.pods().values():
        if pod["metadata"]["labels"].get(naming.LABEL_ROLE) != naming.ROLE_VALIDATION:
            continue
        container = pod["spec"]["containers"][0]["name"]
        term = {"exitCode": 0, "reason": "Completed", "finishedAt": format_time(api.now)}
        pod["status"] = {
            "phase": "Succeeded",
            "containerStatuses": [{"name": container, "state": {"terminated": term}}],
        }


def workers(api: WireApi) -> dict[str, dict[str, Any]]:
    return {
        n: p
        for n, p in api.pods().items()
        if p["metadata"]["labels"].get(naming.LABEL_ROLE) == naming.ROLE_WORKER
    }


def test_the_gang_gate_is_removed_by_an_exact_strategic_merge_patch() -> None:
    async def scenario(api: WireApi, h: Harness) -> None:
        api.objects[JOB_PATH] = job_manifest()
        await h.reconcile()  # ConfigMap, Service, validation pod
        validation_passes(api)
        await h.reconcile()  # the gang, gated; then its gates lifted
        gang = workers(api)
        assert sorted(gang) == ["tune-a1-0", "tune-a1-1"]
        creates = [r for r in api.sent("POST", PODS) if "tune-a1" in r.body["metadata"]["name"]]
        assert all(
            r.body["spec"]["schedulingGates"] == [{"name": naming.GANG_GATE}] for r in creates
        ), "created gated: nothing is placed before the whole gang exists"
        patches = [r for r in api.sent("PATCH", PODS)]
        assert sorted(r.path for r in patches) == [f"{PODS}/tune-a1-0", f"{PODS}/tune-a1-1"]
        for request in patches:
            assert request.content_type == STRATEGIC_MERGE_PATCH
            assert request.body == GATE_REMOVAL
        last_create = max(i for i, r in enumerate(api.requests) if r in creates)
        first_patch = min(i for i, r in enumerate(api.requests) if r in patches)
        assert last_create < first_patch, "gates lifted only once every pod exists"
        assert all(p["spec"]["schedulingGates"] == [] for p in gang.values())

    on_wire(scenario)


def test_gate_removal_keeps_other_gates_and_tolerates_a_gone_pod() -> None:
    async def scenario(api: WireApi, h: Harness) -> None:
        api.objects[JOB_PATH] = job_manifest()
        api.objects[f"{PODS}/tune-a1-0"] = {
            "metadata": {"name": "tune-a1-0", "namespace": NS, "uid": "p0"},
            "spec": {
                "schedulingGates": [
                    {"name": "kueue.x-k8s.io/admission"},
                    {"name": naming.GANG_GATE},
                ]
            },
        }
        await h.execute(Plan(actions=[UngatePod("tune-a1-0"), UngatePod("tune-a1-1")]))
        assert [(r.path, r.content_type, r.body) for r in api.sent("PATCH")] == [
            (f"{PODS}/tune-a1-0", STRATEGIC_MERGE_PATCH, GATE_REMOVAL),
            (f"{PODS}/tune-a1-1", STRATEGIC_MERGE_PATCH, GATE_REMOVAL),
        ]
        gates = api.pods()["tune-a1-0"]["spec"]["schedulingGates"]
        assert gates == [{"name": "kueue.x-k8s.io/admission"}], "Kueue's gate is not ours"

    on_wire(scenario)


# -- ConfigMap -------------------------------------------------------------------------------------
def config_map(data: dict[str, str]) -> ApplyConfigMap:
    return ApplyConfigMap(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "tune-config",
                "namespace": NS,
                "annotations": {"kubetune.io/attempt": "1"},
                "ownerReferences": [
                    {
                        "apiVersion": naming.API_VERSION,
                        "kind": naming.KIND,
                        "name": "tune",
                        "uid": "uid-tune",
                        "controller": True,
                    }
                ],
            },
            "data": data,
        }
    )


def test_config_map_is_written_when_its_data_changes_and_only_then() -> None:
    async def scenario(api: WireApi, h: Harness) -> None:
        api.objects[JOB_PATH] = job_manifest()
        await h.execute(Plan(actions=[config_map({"job.json": "v1"})]))
        assert [(r.method, r.path) for r in api.requests] == [
            ("POST", f"/api/v1/namespaces/{NS}/configmaps")
        ]
        api.requests.clear()
        await h.execute(Plan(actions=[config_map({"job.json": "v1"})]))
        assert api.requests == [], "unchanged data: no request at all"
        await h.execute(Plan(actions=[config_map({"job.json": "v2"})]))
        assert [(r.method, r.path) for r in api.requests] == [
            ("POST", f"/api/v1/namespaces/{NS}/configmaps"),  # AlreadyExists
            ("GET", CM_PATH),  # ours? (owner check)
            ("PATCH", CM_PATH),
        ]
        patch = api.requests[-1]
        assert patch.content_type == MERGE_PATCH
        assert patch.body == {
            "metadata": {"annotations": {"kubetune.io/attempt": "1"}},
            "data": {"job.json": "v2"},
        }
        assert api.objects[CM_PATH]["data"] == {"job.json": "v2"}
        api.requests.clear()
        await h.execute(Plan(actions=[config_map({"job.json": "v2"})]))
        assert api.requests == [], "written once per change"
        # A restarted operator has no memory of what it wrote: it checks and rewrites once.
        h.controller = Controller(h.client, h.settings, OperatorMetrics())  # type: ignore[arg-type]
        await h.execute(Plan(actions=[config_map({"job.json": "v3"})]))
        assert api.objects[CM_PATH]["data"] == {"job.json": "v3"}

    on_wire(scenario)


# -- Kueue: the controller feeds the job's Workload and the flavors to the decision -------------
def test_controller_feeds_workloads_and_flavors_and_remembers_its_own_create() -> None:
    settings = fast_settings()
    cluster = FakeCluster(job_manifest(runPolicy={"queueName": "gpu-queue"}), settings)
    controller = Controller(None, settings, OperatorMetrics())  # type: ignore[arg-type]
    controller.kueue = True
    controller.cache.flavors = {"gpu": [FlavorView("gpu", node_labels=(("pool", "a100"),))]}

    def step(indexed: bool = True) -> Plan:
        assert cluster.job is not None
        controller.cache.jobs = {KEY: [copy.deepcopy(cluster.job)]}
        controller.cache.pods = {KEY: [PodView.from_body(b) for b in cluster.pods.values()]}
        views = [WorkloadView.from_body(b) for b in cluster.workloads.values()]
        controller.cache.workloads = {KEY: views if indexed else []}
        obs = controller.observe(KEY, now=cluster.now)
        assert obs is not None
        plan = decide(obs, settings)
        cluster.apply(plan)
        return plan

    step()
    cluster.pass_validation()
    plan = step()
    (ensure,) = [a for a in plan.actions if isinstance(a, EnsureWorkload)]
    # The executor records its create; the watch has not delivered the Workload yet.
    controller.cache.wrote_workload(
        KEY,
        {
            **cluster.workload(),
            "metadata": {**cluster.workload()["metadata"], "resourceVersion": "5"},
        },
    )
    plan = step(indexed=False)
    assert not [a for a in plan.actions if isinstance(a, EnsureWorkload)], "created once"
    assert cluster.workers() == []
    cluster.admit_workload("gpu")
    cluster.workload()["metadata"]["resourceVersion"] = "6"
    step()
    assert [p["spec"]["nodeSelector"]["pool"] for p in cluster.workers()] == ["a100", "a100"]
    assert ensure.name == cluster.workload()["metadata"]["name"]


# -- the validation pod is not re-run without limit ------------------------------------------------
def validation_pod_on(api: WireApi, node: str) -> str | None:
    """Bind the pending validation pod to ``node``; its name (None if there is none)."""
    for name, pod in api.pods().items():
        labels = pod["metadata"]["labels"]
        if labels.get(naming.LABEL_ROLE) == naming.ROLE_VALIDATION and not pod["spec"].get(
            "nodeName"
        ):
            pod["spec"]["nodeName"] = node
            pod["status"]["phase"] = "Running"
            pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}]
            return name
    return None


def test_validation_is_rerun_at_most_validation_reruns_times_on_the_wire() -> None:
    async def scenario(api: WireApi, h: Harness) -> None:
        api.objects[JOB_PATH] = job_manifest()
        runs: list[str] = []
        for i in range(12):
            await h.reconcile()
            api.now += timedelta(seconds=5)
            node = f"cpu-{i}"
            h.nodes[node] = NodeView(node, True, T0)
            name = validation_pod_on(api, node)
            if name is not None:
                runs.append(name)
                del h.nodes[node]  # the node dies under it
        created = [
            r.body["metadata"]["name"]
            for r in api.sent("POST", PODS)
            if r.body["metadata"]["labels"].get(naming.LABEL_ROLE) == naming.ROLE_VALIDATION
        ]
        assert created == ["tune-validate-1", "tune-validate-2", "tune-validate-3"]
        assert runs == created
        status = api.objects[JOB_PATH]["status"]
        assert status["phase"] == "Failed"
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert "validation could not run" in failed["message"]
        assert not workers(api), "no GPU pod for a job that could not be validated"

    on_wire(scenario, fast_settings(validation_reruns=2))


def test_a_validation_pod_that_keeps_vanishing_is_not_rerun_forever() -> None:
    cluster = FakeCluster(job_manifest(), fast_settings(validation_reruns=2))
    created = 0
    for _ in range(20):
        plan = cluster.step()
        created += sum(1 for n in plan.pods_to_create() if "validate" in n)
        cluster.advance(5)
        cluster.step()  # the operator has seen its pod (a watch event, or its own write)
        for pod in cluster.validation_pods():
            del cluster.pods[pod["metadata"]["name"]]
        cluster.advance(60)
    assert created <= 1 + cluster.settings.validation_reruns
    assert cluster.status["phase"] == "Failed"


# -- message length caps ---------------------------------------------------------------------------
def test_a_huge_termination_message_is_clipped_everywhere() -> None:
    cluster = FakeCluster(job_manifest())
    cluster.start_running()
    huge = "peer closed connection\n" + "x" * 200_000
    cluster.finish("tune-a1-1", 1, message=huge)
    plan = cluster.step()
    assert plan.status is not None
    restarting = condition(cluster, "Restarting")
    assert restarting["status"] == "True"
    message = restarting["message"]
    # The pod's part is clipped to failures.MAX_MESSAGE, whitespace collapsed; the
    # operator's own context around it is short.
    start = message.index("pod tune-a1-1 (rank 1) exited with code 1")
    end = message.index("...;", start) + 3
    assert end - start == FAILURE_MAX
    assert message[start:end].startswith(
        "pod tune-a1-1 (rank 1) exited with code 1 (Error): peer closed connection xxx"
    )
    assert len(message) < FAILURE_MAX + 256
    assert all(len(e.message) <= 1024 for e in plan.events)
    for cond in plan.status["conditions"]:
        assert len(cond["message"]) <= STATUS_MAX and len(cond["reason"]) <= 1024
    assert len(plan.status["progress"]["summary"]) <= SUMMARY_MAX


def test_a_huge_scheduler_message_is_clipped_in_conditions_and_events() -> None:
    cluster = FakeCluster(job_manifest(runPolicy={"schedulingTimeoutSeconds": 60}))
    cluster.step()
    cluster.pass_validation()
    cluster.step()
    huge = "0/4 nodes are available: " + "Insufficient nvidia.com/gpu. " * 10_000
    for body in cluster.workers():
        cluster.unschedulable(body["metadata"]["name"], huge)
    cluster.step()
    cluster.advance(61)
    plan = cluster.step()
    assert plan.status is not None
    admitted = condition(cluster, "Admitted")
    assert admitted["reason"] == "GangUnschedulable"
    assert len(admitted["message"]) == STATUS_MAX, "clipped to the CRD's maxLength"
    assert admitted["message"].startswith("the gang of 2 pods")
    for cond in plan.status["conditions"]:
        assert len(cond["message"]) <= STATUS_MAX
    warning = next(e for e in plan.events if e.reason == "GangUnschedulable")
    assert len(warning.message) == 1024
    assert len(plan.status["progress"]["summary"]) <= SUMMARY_MAX


def test_the_clipped_status_is_what_goes_on_the_wire() -> None:
    cluster = FakeCluster(job_manifest())
    cluster.start_running()
    cluster.finish("tune-a1-0", 1, message="y" * 100_000)

    async def scenario(api: WireApi, h: Harness) -> None:
        load(api, cluster)
        api.requests.clear()
        await h.reconcile()
        (status_patch,) = api.sent("PATCH", JOB_PATH)
        assert status_patch.path == JOB_PATH + "/status"
        conditions = status_patch.body["status"]["conditions"]
        longest = max(len(c["message"]) for c in conditions)
        assert FAILURE_MAX <= longest < FAILURE_MAX + 256, "the pod's text clipped, once"
        events = [r.body for r in api.sent("POST") if r.path.endswith("/events")]
        assert events and all(len(e["message"]) <= 1024 for e in events)
        assert any("yyy" in e["message"] for e in events)

    on_wire(scenario)


def test_progress_summary_is_clipped() -> None:
    huge = 10**200
    summary = step_summary(huge, huge, "saving")
    assert len(summary) == SUMMARY_MAX and summary.endswith("...")
    assert step_summary(120, 300) == "120/300 (40%)"
    assert step_summary(5, 0, "evaluating") == "step 5 evaluating"
