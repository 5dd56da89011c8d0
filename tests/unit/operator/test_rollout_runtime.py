"""The ModelRollout worker (rollout/runtime.py) against a fake API server and a fake
Prometheus: the order of its writes, the fences, annotations, Events and metrics."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from functools import wraps
from typing import Any, cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kubetune.api.rollout import ABORT_ANNOTATION
from kubetune.contract.metrics import ROLLOUT_METRICS
from kubetune_operator.events import EventRecorder
from kubetune_operator.kube import ApiError, KubeClient
from kubetune_operator.rollout.runtime import RolloutController, rollouts_served
from kubetune_operator.settings import OperatorSettings
from tests.unit.operator.rollout_world import T0, rollout_doc


def sync(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test in its own event loop (no pytest async plugin here)."""

    @wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


PAUSED = "kubetune_rollout_paused"
RPATH = "/apis/kubetune.io/v1alpha1/namespaces/ml/modelrollouts/r"
HPATH = "/apis/gateway.networking.k8s.io/v1/namespaces/ml/httproutes/chat"


def merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


class FakeKube:
    """Objects by path, resourceVersion fencing, and a log of writes."""

    path = staticmethod(KubeClient.path)

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []
        self.rv = 100

    def put(self, path: str, body: dict[str, Any]) -> None:
        self.rv += 1
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[path] = body

    def _fence(self, path: str, body: dict[str, Any]) -> None:
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if rv is not None and rv != self.objects[path]["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified")

    async def get(self, path: str) -> dict[str, Any]:
        if path not in self.objects:
            raise ApiError(404, "NotFound", path)
        return copy.deepcopy(self.objects[path])

    async def replace(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self._fence(path, body)
        self.writes.append(("replace", path))
        self.put(path, body)
        return await self.get(path)

    async def patch(
        self, path: str, body: dict[str, Any], content_type: str = ""
    ) -> dict[str, Any]:
        target = path.removesuffix("/status")
        self._fence(target, body)
        self.writes.append(("patch", path))
        obj = copy.deepcopy(self.objects[target])
        if path.endswith("/status"):
            obj.setdefault("status", {})
            merge(obj["status"], body["status"])
        else:
            merge(
                obj["metadata"],
                {k: v for k, v in body["metadata"].items() if k != "resourceVersion"},
            )
        self.put(target, obj)
        return await self.get(target)


class FakeEvents:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str, str]] = []

    async def post(self, involved: dict[str, Any], type: str, reason: str, message: str) -> None:
        assert involved["kind"] == "ModelRollout" and involved["name"] == "r"
        self.posted.append((type, reason, message))

    def forget(self, uid: str) -> None:
        pass


class FakePrometheus:
    """Every query answers ``value`` (the samples queries too)."""

    def __init__(self, value: float | None) -> None:
        self.value = value
        self.queries: list[str] = []

    async def query(self, promql: str, at: datetime | None = None) -> float | None:
        self.queries.append(promql)
        return self.value


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def setup(
    steps: list[dict[str, Any]],
) -> tuple[FakeKube, FakeEvents, Clock, RolloutController, CollectorRegistry]:
    kube = FakeKube()
    doc = rollout_doc(steps)
    doc["metadata"]["uid"] = "uid-r"
    doc["spec"]["analysis"]["metrics"][0].update(
        query='latency{model_name="${model}"}', threshold=1.0
    )
    kube.put(RPATH, doc)
    kube.put(
        HPATH,
        {
            "metadata": {"name": "chat", "namespace": "ml"},
            "spec": {"rules": [{"backendRefs": [{"name": "base", "port": 8000, "weight": 100}]}]},
        },
    )
    job = {
        "status": {"phase": "Succeeded", "conditions": [{"type": "Promotable", "status": "True"}]}
    }
    events = FakeEvents()
    clock = Clock()
    registry = CollectorRegistry()
    controller = RolloutController(
        cast(KubeClient, kube),
        OperatorSettings(leader_election=False),
        registry,
        cast(EventRecorder, events),
        lambda key: job if key == ("ml", "sft") else None,
        clock=clock,
    )
    return kube, events, clock, controller, registry


def weights(kube: FakeKube) -> list[tuple[str, int]]:
    refs = kube.objects[HPATH]["spec"]["rules"][0]["backendRefs"]
    return [(r["name"], r["weight"]) for r in refs]


def status(kube: FakeKube) -> dict[str, Any]:
    return dict(kube.objects[RPATH].get("status") or {})


@sync
async def test_a_failing_metric_zeroes_the_route_before_the_status_records_it() -> None:
    kube, events, clock, controller, registry = setup([{"setWeight": 20}, {"pause": {}}])
    prometheus = FakePrometheus(0.5)
    controller._prometheus_for = lambda spec: prometheus  # type: ignore[method-assign,assignment,return-value]
    assert await controller.reconcile(("ml", "r")) == 1.0
    assert weights(kube) == [("base", 80), ("tuned", 20)]
    await controller.reconcile(("ml", "r"))
    assert status(kube)["phase"] == "Paused"
    text = generate_latest(registry).decode()
    assert f'{PAUSED}{{modelrollout="r",namespace="ml",reason="PauseStep"}} 1.0' in text
    assert f'{PAUSED}{{modelrollout="r",namespace="ml",reason="AnalysisInconclusive"}} 0.0' in text
    clock.now += timedelta(seconds=30)
    await controller.reconcile(("ml", "r"))
    assert status(kube)["measurements"][-1]["verdict"] == "Successful"
    assert '"tuned"' in prometheus.queries[0] or "tuned" in " ".join(prometheus.queries)
    prometheus.value = 5.0  # the candidate (and the baseline) now far over the threshold
    clock.now += timedelta(seconds=30)
    kube.writes.clear()
    assert await controller.reconcile(("ml", "r")) is None
    assert kube.writes[:2] == [("replace", HPATH), ("patch", RPATH + "/status")]
    assert weights(kube) == [("base", 100), ("tuned", 0)]
    st = status(kube)
    assert st["phase"] == "RolledBack" and st["abort"]["reason"] == "MetricFailed"
    await controller.stop()  # flushes the Event posts
    assert ("Warning", "MetricFailed") in [(t, r) for t, r, _ in events.posted]
    text = generate_latest(registry).decode()
    assert (
        'kubetune_rollout_aborts_total{modelrollout="r",namespace="ml",reason="MetricFailed"} 1.0'
        in text
    )
    assert f'{PAUSED}{{modelrollout="r",namespace="ml",reason="PauseStep"}} 0.0' in text
    assert 'kubetune_rollout_phase{modelrollout="r",namespace="ml",phase="RolledBack"} 1.0' in text
    assert 'kubetune_rollout_candidate_weight{modelrollout="r",namespace="ml"} 0.0' in text
    assert 'verdict="Failed"} 1.0' in text


@sync
async def test_abort_annotation_is_removed_only_after_acting_and_fenced() -> None:
    kube, events, _, controller, _ = setup([{"setWeight": 20}, {"pause": {}}])
    await controller.reconcile(("ml", "r"))
    kube.objects[RPATH]["metadata"]["annotations"][ABORT_ANNOTATION] = "bad answers"
    await controller.reconcile(("ml", "r"))
    assert weights(kube)[1] == ("tuned", 0)
    assert ABORT_ANNOTATION not in kube.objects[RPATH]["metadata"].get("annotations", {})
    assert status(kube)["abort"]["message"] == "bad answers"
    await controller.stop()
    assert ("Warning", "AbortedByUser", "bad answers") in events.posted


@sync
async def test_a_status_write_on_a_changed_rollout_is_refused_and_retried() -> None:
    kube, _, _, controller, _ = setup([{"setWeight": 20}, {"pause": {}}])
    original = kube.get

    async def stale_get(path: str) -> dict[str, Any]:
        body = await original(path)
        if path == RPATH:
            kube.rv += 1  # someone edits the rollout right after our read
            kube.objects[RPATH]["metadata"]["resourceVersion"] = str(kube.rv)
        return body

    kube.get = stale_get  # type: ignore[method-assign]
    try:
        await controller.reconcile(("ml", "r"))
    except ApiError as exc:
        assert exc.conflict
    else:
        raise AssertionError("a stale status write must be refused")
    assert "status" not in kube.objects[RPATH]
    await controller.stop()


@sync
async def test_metrics_are_exactly_the_contract() -> None:
    _, _, _, controller, registry = setup([{"setWeight": 20}])
    await controller.reconcile(("ml", "r"))
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    assert set(families) == {m.family_name for m in ROLLOUT_METRICS}
    for spec in ROLLOUT_METRICS:
        labels = {k for s in families[spec.family_name].samples for k in s.labels}
        assert labels <= set(spec.label_names), spec.name
    await controller.stop()


@sync
async def test_first_reconcile_starts_the_rollouts_series_at_zero_and_deletion_drops_them() -> None:
    kube, _, _, controller, registry = setup([{"setWeight": 20}, {"pause": {}}])
    await controller.reconcile(("ml", "r"))  # sets the weight: nothing measured yet
    text = generate_latest(registry).decode()
    for verdict in ("Successful", "Failed", "Inconclusive", "Error"):
        series = f'metric="latency",modelrollout="r",namespace="ml",verdict="{verdict}"'
        assert f"kubetune_rollout_measurements_total{{{series}}} 0.0" in text, verdict
    assert 'aborts_total{modelrollout="r",namespace="ml",reason="QueryErrors"} 0.0' in text
    assert 'kubetune_rollout_promotions_total{modelrollout="r",namespace="ml"} 0.0' in text

    controller.event("DELETED", ("ml", "r"), kube.objects[RPATH])
    assert 'modelrollout="r"' not in generate_latest(registry).decode()
    # a rollout found gone by a reconcile (a missed DELETED) goes too
    await controller.reconcile(("ml", "r"))
    assert 'modelrollout="r"' in generate_latest(registry).decode()
    del kube.objects[RPATH]
    assert await controller.reconcile(("ml", "r")) is None
    assert 'modelrollout="r"' not in generate_latest(registry).decode()
    await controller.stop()


@sync
async def test_worker_requeues_at_the_time_the_machine_asked_for() -> None:
    kube, _, _, controller, _ = setup([{"setWeight": 20}, {"pause": {"durationSeconds": 3600}}])
    await controller.start()
    controller.event("ADDED", ("ml", "r"), kube.objects[RPATH])
    for _ in range(100):
        await asyncio.sleep(0.02)
        if status(kube).get("phase") == "Paused":
            break
    assert status(kube)["phase"] == "Paused"  # 20 % written, read back 1 s later, paused
    await controller.stop()


@sync
async def test_served_only_where_the_crd_is_installed() -> None:
    class Discovery:
        def __init__(self, names: list[str]) -> None:
            self.names = names

        async def get(self, path: str) -> dict[str, Any]:
            assert path == "/apis/kubetune.io/v1alpha1"
            return {"resources": [{"name": n} for n in self.names]}

    assert await rollouts_served(cast(KubeClient, Discovery(["finetunejobs", "modelrollouts"])))
    assert not await rollouts_served(cast(KubeClient, Discovery(["finetunejobs"])))
