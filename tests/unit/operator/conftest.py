"""Fixtures for the operator's unit tests: job manifests and an in-memory cluster that
applies :class:`~kubetune_operator.plan.Plan` objects the way the API server and a
kubelet would (deterministically, with a controllable clock)."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubetune_operator import naming
from kubetune_operator.admission import Capacity
from kubetune_operator.lifecycle import decide
from kubetune_operator.observed import (
    CreateRefusal,
    NodeView,
    Observed,
    PodView,
    ProgressSample,
    format_time,
)
from kubetune_operator.plan import (
    ApplyConfigMap,
    CreatePod,
    DeleteJob,
    DeletePod,
    DeleteWorkload,
    EnsureService,
    EnsureWorkload,
    FinishWorkload,
    Plan,
    ReleaseWorkload,
    UngatePod,
)
from kubetune_operator.queueing import FlavorView, WorkloadView
from kubetune_operator.settings import OperatorSettings

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def job_manifest(name: str = "tune", namespace: str = "team", **spec: Any) -> dict[str, Any]:
    """A valid FineTuneJob as the API server stores it (uid, generation, timestamps)."""
    base: dict[str, Any] = {
        "method": "lora",
        "model": {"uri": "pvc://models/llama-8b"},
        "dataset": {"train": "pvc://data/train.jsonl", "format": "chat"},
        "hyperparameters": {"globalBatchSize": 32, "microBatchSize": 2, "learningRate": 2e-4},
        "resources": {"nodes": 2, "gpusPerNode": 8, "cpu": "16", "memory": "128Gi"},
        "output": {"uri": "pvc://ckpt/tune"},
        "runPolicy": {"backoffLimit": 2, "schedulingTimeoutSeconds": 60},
    }
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "generation": 1,
            "resourceVersion": "1",
            "creationTimestamp": format_time(T0),
        },
        "spec": base,
    }


def fast_settings(**overrides: Any) -> OperatorSettings:
    values: dict[str, Any] = {
        "backoff_base_seconds": 10.0,
        "backoff_max_seconds": 300.0,
        "unschedulable_retry_seconds": 30.0,
        "node_lost_grace_seconds": 20.0,
        "leader_election": False,
        "identity": "test",
        "lease_namespace": "kubetune-system",
    }
    values.update(overrides)
    return OperatorSettings(**values)


class FakeCluster:
    """A FineTuneJob, its pods and the nodes, mutated by plans and by test helpers."""

    def __init__(self, job: dict[str, Any], settings: OperatorSettings | None = None) -> None:
        self.job: dict[str, Any] | None = copy.deepcopy(job)
        self.settings = settings or fast_settings()
        self.now = T0 + timedelta(seconds=1)
        self.pods: dict[str, dict[str, Any]] = {}
        self.nodes: dict[str, NodeView] = {
            f"gpu-{i}": NodeView(f"gpu-{i}", True, T0) for i in range(4)
        }
        self.config_maps: dict[str, dict[str, Any]] = {}
        self.services: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[str, str, str]] = []
        self.plans: list[Plan] = []
        self.progress: ProgressSample | None = None
        self.refusal: CreateRefusal | None = None  # the executor's last refused pod create
        self.capacity: Capacity | None = None  # what other jobs hold (None: no admission)
        self.graceful_delete = False
        # Kueue (queueing.py): whether its API is served, the job's Workloads, the flavors
        self.kueue = False
        self.workloads: dict[str, dict[str, Any]] = {}
        self.flavors: dict[str, FlavorView] = {}
        self._uids = itertools.count(1)
        self._rv = itertools.count(10)

    # -- time and views ------------------------------------------------------------------------
    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    @property
    def status(self) -> dict[str, Any]:
        assert self.job is not None
        return dict(self.job.get("status") or {})

    def condition(self, kind: str) -> dict[str, Any] | None:
        return next((c for c in self.status.get("conditions", []) if c["type"] == kind), None)

    def observe(self, ungated_since: datetime | None = None) -> Observed:
        assert self.job is not None
        return Observed(
            raw=copy.deepcopy(self.job),
            pods=tuple(PodView.from_body(b) for b in self.pods.values()),
            nodes=dict(self.nodes),
            progress=self.progress,
            now=self.now,
            ungated_since=ungated_since,
            refusal=self.refusal,
            capacity=self.capacity,
            kueue=self.kueue,
            workloads=tuple(WorkloadView.from_body(b) for b in self.workloads.values()),
            flavors=dict(self.flavors),
        )

    def workers(self, attempt: int | None = None) -> list[dict[str, Any]]:
        out = [
            b
            for b in self.pods.values()
            if b["metadata"]["labels"].get(naming.LABEL_ROLE) == naming.ROLE_WORKER
        ]
        if attempt is not None:
            out = [b for b in out if b["metadata"]["labels"][naming.LABEL_ATTEMPT] == str(attempt)]
        return sorted(out, key=lambda b: b["metadata"]["name"])

    def validation_pods(self) -> list[dict[str, Any]]:
        return [
            b
            for b in self.pods.values()
            if b["metadata"]["labels"].get(naming.LABEL_ROLE) == naming.ROLE_VALIDATION
        ]

    # -- the controller loop -------------------------------------------------------------------
    def step(self, *, limit: int | None = None, **observe: Any) -> Plan:
        """decide() on the current state and apply the plan (``limit``: only the status and
        the first ``limit`` actions -- an operator crash half-way)."""
        plan = decide(self.observe(**observe), self.settings)
        self.apply(plan, limit=limit)
        self.plans.append(plan)
        return plan

    def settle(self, rounds: int = 6) -> Plan:
        """Step until a plan does nothing (the operator is idle)."""
        plan = self.step()
        for _ in range(rounds):
            if plan.status is None and not plan.actions:
                return plan
            plan = self.step()
        return plan

    def apply(self, plan: Plan, *, limit: int | None = None) -> None:
        assert self.job is not None
        if plan.status is not None:
            self.job["status"] = copy.deepcopy(plan.status)
            self.job["metadata"]["resourceVersion"] = str(next(self._rv))
        actions = plan.actions if limit is None else plan.actions[:limit]
        for action in actions:
            if isinstance(action, CreatePod):
                name = action.name
                if name in self.pods:
                    continue  # AlreadyExists
                body = copy.deepcopy(action.body)
                body["metadata"]["uid"] = f"pod-{next(self._uids)}"
                body["metadata"]["creationTimestamp"] = format_time(self.now)
                body["metadata"]["resourceVersion"] = str(next(self._rv))
                gated = bool(body["spec"].get("schedulingGates"))
                body["status"] = {
                    "phase": "Pending",
                    "conditions": [
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": "SchedulingGated" if gated else "Unschedulable",
                        }
                    ],
                }
                self.pods[name] = body
            elif isinstance(action, UngatePod):
                pod = self.pods[action.name]
                pod["spec"]["schedulingGates"] = [
                    g
                    for g in pod["spec"].get("schedulingGates", [])
                    if g["name"] != naming.GANG_GATE
                ]
            elif isinstance(action, DeletePod):
                pod = self.pods.get(action.name)
                if pod is None or pod["metadata"]["uid"] != action.uid:
                    continue
                if self.graceful_delete and not action.force:
                    pod["metadata"]["deletionTimestamp"] = format_time(self.now)
                else:
                    del self.pods[action.name]
            elif isinstance(action, ApplyConfigMap):
                self.config_maps[action.body["metadata"]["name"]] = copy.deepcopy(action.body)
            elif isinstance(action, EnsureService):
                self.services.setdefault(action.body["metadata"]["name"], action.body)
            elif isinstance(action, EnsureWorkload):
                if action.name not in self.workloads:
                    body = copy.deepcopy(action.body)
                    body["metadata"]["uid"] = f"wl-{next(self._uids)}"
                    body["metadata"]["creationTimestamp"] = format_time(self.now)
                    self.workloads[action.name] = body
            elif isinstance(action, DeleteWorkload):
                self.workloads.pop(action.name, None)
            elif isinstance(action, ReleaseWorkload | FinishWorkload):
                self._workload_status(action)
            elif isinstance(action, DeleteJob):
                self.job = None
                return
        self.events += [(e.type, e.reason, e.message) for e in plan.events]

    # -- Kueue simulation -------------------------------------------------------------------------
    def _set_workload_condition(self, name: str, kind: str, status: str, reason: str) -> None:
        wl = self.workloads[name]
        conditions = [
            c for c in wl.setdefault("status", {}).get("conditions", []) if c["type"] != kind
        ]
        conditions.append(
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": f"{kind} {reason}",
                "lastTransitionTime": format_time(self.now),
            }
        )
        wl["status"]["conditions"] = conditions

    def _workload_status(self, action: ReleaseWorkload | FinishWorkload) -> None:
        wl = self.workloads.get(action.name)
        if wl is None or wl["metadata"]["uid"] != action.uid:
            return
        if isinstance(action, ReleaseWorkload):
            wl["status"].pop("admission", None)
            self._set_workload_condition(action.name, "QuotaReserved", "False", "Pending")
            self._set_workload_condition(action.name, "Admitted", "False", "NoReservation")
            self._set_workload_condition(
                action.name, "Requeued", "True" if action.requeue else "False", action.reason
            )
        else:
            self._set_workload_condition(
                action.name, "Finished", "True", "Succeeded" if action.succeeded else "Failed"
            )

    def workload(self) -> dict[str, Any]:
        (only,) = self.workloads.values()
        return only

    def pend_workload(self, message: str) -> None:
        wl = self.workload()
        wl.setdefault("status", {})["conditions"] = [
            {
                "type": "QuotaReserved",
                "status": "False",
                "reason": "Pending",
                "message": message,
                "lastTransitionTime": format_time(self.now),
            }
        ]

    def admit_workload(self, flavor: str = "gpu", cluster_queue: str = "cq") -> None:
        wl = self.workload()
        name = wl["metadata"]["name"]
        wl.setdefault("status", {})["admission"] = {
            "clusterQueue": cluster_queue,
            "podSetAssignments": [
                {"name": "workers", "flavors": {"nvidia.com/gpu": flavor, "cpu": flavor}}
            ],
        }
        self._set_workload_condition(name, "QuotaReserved", "True", "QuotaReserved")
        self._set_workload_condition(name, "Admitted", "True", "Admitted")
        if any(c["type"] == "Evicted" for c in wl["status"]["conditions"]):
            self._set_workload_condition(name, "Evicted", "False", "QuotaReserved")

    def evict_workload(self, reason: str = "Preempted") -> None:
        self._set_workload_condition(self.workload()["metadata"]["name"], "Evicted", "True", reason)

    # -- kubelet / scheduler simulation --------------------------------------------------------
    def finish_gone_deletions(self) -> None:
        for name in [n for n, b in self.pods.items() if b["metadata"].get("deletionTimestamp")]:
            del self.pods[name]

    def place(self, name: str, node: str = "gpu-0", run: bool = True) -> None:
        pod = self.pods[name]
        pod["spec"]["nodeName"] = node
        pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}]
        if run:
            pod["status"]["phase"] = "Running"
            pod["status"]["podIP"] = f"10.0.0.{len(self.pods)}"
            container = pod["spec"]["containers"][0]["name"]
            pod["status"]["containerStatuses"] = [
                {"name": container, "state": {"running": {"startedAt": format_time(self.now)}}}
            ]

    def unschedulable(self, name: str, message: str) -> None:
        self.pods[name]["status"]["conditions"] = [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
            }
        ]

    def place_all(self, attempt: int | None = None) -> None:
        for i, body in enumerate(self.workers(attempt)):
            if not body["spec"].get("schedulingGates"):
                self.place(body["metadata"]["name"], f"gpu-{i % 4}")

    def finish(
        self,
        name: str,
        exit_code: int = 0,
        reason: str | None = None,
        message: str | None = None,
        pod_reason: str | None = None,
    ) -> None:
        pod = self.pods[name]
        pod["status"]["phase"] = "Succeeded" if exit_code == 0 else "Failed"
        if pod_reason:
            pod["status"]["reason"] = pod_reason
        container = pod["spec"]["containers"][0]["name"]
        term: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": reason or ("Completed" if exit_code == 0 else "Error"),
            "finishedAt": format_time(self.now),
        }
        if message:
            term["message"] = message
        pod["status"]["containerStatuses"] = [{"name": container, "state": {"terminated": term}}]

    def pass_validation(self) -> None:
        for pod in self.validation_pods():
            self.finish(pod["metadata"]["name"], 0)

    def start_running(self) -> Plan:
        """From a new job to a running gang (validation passed, all pods placed and running)."""
        self.step()
        self.pass_validation()
        self.step()  # validated -> gang created, then ungated
        self.place_all()
        return self.step()  # running


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., FakeCluster]]:
    def make(settings: OperatorSettings | None = None, **spec: Any) -> FakeCluster:
        return FakeCluster(job_manifest(**spec), settings)

    yield make


@pytest.fixture
def settings() -> OperatorSettings:
    return fast_settings()


@pytest.fixture
def settings_factory() -> Callable[..., OperatorSettings]:
    return fast_settings


@pytest.fixture
def manifest() -> Callable[..., dict[str, Any]]:
    return job_manifest
