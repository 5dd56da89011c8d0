"""Kopf registration only: indices (the caches), event handlers (which just enqueue), the
startup/cleanup hooks and kopf's own settings. All decisions live in ``lifecycle``.

Why indices + events rather than kopf daemons/timers per job: daemons and timers make
kopf put a finalizer on every FineTuneJob, so deleting a job (or its namespace) would hang
whenever the operator is down. This design is finalizer-free: owned objects carry
``ownerReferences`` and the garbage collector deletes them with the job. Kopf indices also
give the one guarantee the level-triggered controller needs: handlers start only after the
initial lists of jobs, pods and nodes are complete, so a restarted operator never mistakes
"not listed yet" for "gone".
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import kopf

from kubetune.api.intent import slim_managed_fields
from kubetune.api.pipeline import PLURAL as PIPELINES
from kubetune.api.rollout import PLURAL as ROLLOUTS
from kubetune_operator import naming, queueing
from kubetune_operator.controller import Controller
from kubetune_operator.kube import Credentials
from kubetune_operator.observed import NodeView, PodView
from kubetune_operator.pipeline.runtime import PipelineController
from kubetune_operator.rollout.runtime import RolloutController

POD_SELECTOR = naming.LABEL_JOB  # server-side: the operator never receives unrelated pods


def _slim(body: kopf.Body) -> dict[str, Any]:
    data = copy.deepcopy(dict(body))
    meta = data.get("metadata") or {}
    # Only what tells the author's spec fields from the server's defaults (team defaults).
    managed = slim_managed_fields(meta)
    meta.pop("managedFields", None)
    if managed:
        meta["managedFields"] = managed
    return data


class NoDiffBase(kopf.DiffBaseStorage):
    """Kopf computes a deep-copied "essence" of every object on every event for its
    create/update/delete change detection. This operator registers no such handlers (it is
    level-triggered), so the essence is never used: skipping it halves kopf's CPU per event."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def configure_kopf(settings: kopf.OperatorSettings, watch_nodes: bool) -> None:
    """Kopf settings for this operator (called from the startup handler)."""
    settings.peering.standalone = True  # leadership comes from our Lease (see leader.py)
    settings.scanning.disabled = True  # no CRD/namespace watching rights needed
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = naming.MANAGER
    settings.watching.label_selectors["v1", "pods"] = POD_SELECTOR
    settings.networking.request_timeout = 60.0
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.persistence.consistency_timeout = 0.0
    settings.persistence.diffbase_storage = NoDiffBase()


def build_registry(
    controller: Controller,
    credentials: Credentials,
    rollouts: RolloutController | None = None,
    pipelines: PipelineController | None = None,
) -> kopf.OperatorRegistry:
    """A registry bound to ``controller`` (no module-level globals: tests build their own);
    ModelRollouts are watched only with ``rollouts``, FineTunePipelines only with
    ``pipelines`` (where their APIs are served)."""
    registry = kopf.OperatorRegistry()
    watch_nodes = controller.settings.watch_nodes

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        token = credentials.token() if credentials.token else None
        scheme, _sep, secret = (token or "").partition(" ")
        return kopf.ConnectionInfo(
            server=credentials.server,
            ca_path=credentials.ca_file,
            insecure=credentials.insecure,
            certificate_path=credentials.cert_file,
            private_key_path=credentials.key_file,
            scheme=scheme or None,
            token=secret or None,
        )

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings, watch_nodes)
        await controller.start()
        if rollouts is not None:
            await rollouts.start()
        if pipelines is not None:
            await pipelines.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        if pipelines is not None:
            await pipelines.stop()
        if rollouts is not None:
            await rollouts.stop()
        await controller.stop()

    @kopf.index(naming.GROUP, naming.VERSION, naming.PLURAL, id="ftj_index", registry=registry)
    def ftj_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
        return {(namespace or "", name): _slim(body)}

    @kopf.index(
        "v1", "pods", labels={naming.LABEL_JOB: kopf.PRESENT}, id="pod_index", registry=registry
    )
    def pod_index(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
        return {
            (namespace or "", naming.job_of(body.get("metadata") or {})): PodView.from_body(body)
        }

    kueue = controller.kueue

    def bind(kwargs: dict[str, Any]) -> None:
        cache = controller.cache
        cache.jobs = kwargs["ftj_index"]
        cache.pods = kwargs["pod_index"]
        if watch_nodes:
            cache.nodes = kwargs["node_index"]
        if kueue:
            cache.workloads = kwargs["workload_index"]
            cache.flavors = kwargs["flavor_index"]

    @kopf.on.event(naming.GROUP, naming.VERSION, naming.PLURAL, id="ftj_event", registry=registry)
    async def ftj_event(type: str, namespace: str | None, name: str, **kwargs: Any) -> None:
        bind(kwargs)
        controller.job_event(type, (namespace or "", name))
        if rollouts is not None:
            rollouts.job_event(namespace or "", name)
        if pipelines is not None and kwargs.get("body") is not None:
            pipelines.job_event(namespace or "", kwargs["body"])

    @kopf.on.event(
        "v1", "pods", labels={naming.LABEL_JOB: kopf.PRESENT}, id="pod_event", registry=registry
    )
    async def pod_event(
        type: str, namespace: str | None, name: str, labels: kopf.Labels, **kwargs: Any
    ) -> None:
        bind(kwargs)
        job = naming.job_of({"labels": labels, "annotations": kwargs.get("annotations") or {}})
        controller.pod_event(type, namespace or "", name, job)

    if kueue:
        # Only where Kueue's API is served (the runner checks): an index of a resource the
        # API server lacks would never finish its initial list, and no handler would start.
        wl_args = (queueing.KUEUE_GROUP, queueing.KUEUE_VERSION, queueing.WORKLOADS)

        @kopf.index(
            *wl_args,
            labels={naming.LABEL_JOB: kopf.PRESENT},
            id="workload_index",
            registry=registry,
        )
        def workload_index(namespace: str | None, body: kopf.Body, **_: Any) -> Any:
            job = naming.job_of(body.get("metadata") or {})
            return {(namespace or "", job): queueing.WorkloadView.from_body(body)}

        @kopf.on.event(
            *wl_args,
            labels={naming.LABEL_JOB: kopf.PRESENT},
            id="workload_event",
            registry=registry,
        )
        async def workload_event(
            type: str, namespace: str | None, name: str, body: kopf.Body, **kwargs: Any
        ) -> None:
            bind(kwargs)
            key = (namespace or "", naming.job_of(body.get("metadata") or {}))
            if type == "DELETED":
                controller.cache.workload_deleted(key, name)
            controller.queue.add(key)

        fl_args = (queueing.KUEUE_GROUP, queueing.KUEUE_VERSION, queueing.RESOURCE_FLAVORS)

        @kopf.index(*fl_args, id="flavor_index", registry=registry)
        def flavor_index(name: str, body: kopf.Body, **_: Any) -> Any:
            return {name: queueing.FlavorView.from_body(body)}

    if rollouts is not None:
        # No index: the worker reads each rollout fresh (they are few); the event only
        # enqueues it (and keeps the body the gauges and job lookups use).
        @kopf.on.event(naming.GROUP, naming.VERSION, ROLLOUTS, id="mro_event", registry=registry)
        async def mro_event(
            type: str, namespace: str | None, name: str, body: kopf.Body, **kwargs: Any
        ) -> None:
            bind(kwargs)
            assert rollouts is not None
            rollouts.event(type, (namespace or "", name), _slim(body))

    if pipelines is not None:
        # No index either: a pipeline is read fresh on each reconcile; its jobs come from
        # the FineTuneJob index.
        @kopf.on.event(naming.GROUP, naming.VERSION, PIPELINES, id="ftp_event", registry=registry)
        async def ftp_event(type: str, namespace: str | None, name: str, **kwargs: Any) -> None:
            bind(kwargs)
            assert pipelines is not None
            pipelines.event(type, (namespace or "", name))

    if watch_nodes:
        last_ready: dict[str, bool] = {}

        @kopf.index("v1", "nodes", id="node_index", registry=registry)
        def node_index(name: str, body: kopf.Body, **_: Any) -> Any:
            return {name: NodeView.from_body(body)}

        @kopf.on.event("v1", "nodes", id="node_event", registry=registry)
        async def node_event(type: str, name: str, body: kopf.Body, **kwargs: Any) -> None:
            bind(kwargs)
            ready = type != "DELETED" and NodeView.from_body(body).ready
            changed = last_ready.get(name) != ready
            last_ready[name] = ready
            if type == "DELETED":
                last_ready.pop(name, None)
            controller.node_event(name, changed)

    return registry
