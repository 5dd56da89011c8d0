"""The ModelRollout worker: observes a rollout, asks :func:`state.decide`, carries it out.

Level-triggered like the FineTuneJob controller: watch events (the rollout, its candidate
FineTuneJob) and timers only enqueue the rollout's key; a worker reads the rollout and its
HTTPRoute fresh from the API server (rollouts are few: a GET each is cheap and never
stale), measures the analysis when one is due, and then acts in an order that keeps the
route safe: the route's weights first (an abort takes the candidate's traffic away in the
same reconcile as the failing measurement), then the status (merge patch of the status
subresource, fenced by the resourceVersion it was decided on), then the steering
annotations it consumed, then Events and metrics.

It runs in the operator's leader only (the runner starts kopf after winning the lease) and
only where the API server serves ModelRollouts (:func:`rollouts_served`): an operator
installed without the new CRD keeps running its FineTuneJobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from kubetune.api import rollout as api
from kubetune_operator import naming
from kubetune_operator.discovery import kubetune_serves
from kubetune_operator.events import EventRecorder
from kubetune_operator.kube import ApiError, KubeClient
from kubetune_operator.rollout import analysis, route
from kubetune_operator.rollout.metrics import RolloutMetrics, RolloutSample
from kubetune_operator.rollout.prometheus import PrometheusHttpClient
from kubetune_operator.rollout.state import (
    AnalysisRequest,
    AnalysisRun,
    CandidateJob,
    Decision,
    Observation,
    analysis_due,
    decide,
)
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.status import merge_patch
from kubetune_operator.workqueue import WorkQueue

logger = logging.getLogger("kubetune.operator.rollout")

Key = tuple[str, str]
JobLookup = Callable[[Key], Mapping[str, Any] | None]

#: Rollouts reconciled at once (each mostly waits on Prometheus and the API server).
WORKERS = 4


async def rollouts_served(client: KubeClient) -> bool:
    """Whether the API server serves kubetune.io ModelRollouts (the CRD is installed)."""
    return await kubetune_serves(client, api.PLURAL, "ModelRollout", logger)


def _status_doc(status: api.ModelRolloutStatus | None) -> dict[str, Any]:
    if status is None:
        return {}
    data: dict[str, Any] = json.loads(status.model_dump_json(by_alias=True, exclude_none=True))
    return data


class RolloutController:
    """One per operator process (the leader)."""

    def __init__(
        self,
        client: KubeClient,
        settings: OperatorSettings,
        registry: CollectorRegistry,
        events: EventRecorder,
        jobs: JobLookup,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.events = events
        self.jobs = jobs
        self.clock = clock or (lambda: datetime.now(UTC))
        self.queue: WorkQueue[Key] = WorkQueue()
        self.known: dict[Key, dict[str, Any]] = {}  # last body seen (gauges, job lookups)
        self.metrics = RolloutMetrics(registry, self._samples)
        self._prometheus: dict[str, PrometheusHttpClient] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        for i in range(WORKERS):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"rollout-worker-{i}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        self.queue.close()
        for client in self._prometheus.values():
            await client.close()
        self._prometheus.clear()

    # -- events from kopf ------------------------------------------------------------------------
    def event(self, event_type: str | None, key: Key, body: Mapping[str, Any]) -> None:
        if event_type == "DELETED":
            uid = (body.get("metadata") or {}).get("uid")
            if uid:
                self.events.forget(str(uid))
            self.known.pop(key, None)
            self.metrics.forget(*key)
            self.queue.discard(key)
            return
        self.known[key] = dict(body)
        self.queue.add(key)

    def job_event(self, namespace: str, job: str) -> None:
        """A FineTuneJob changed: wake the rollouts whose candidate it is."""
        for (ns, name), body in list(self.known.items()):
            candidate = ((body.get("spec") or {}).get("candidate") or {}).get("fineTuneJob")
            if ns == namespace and candidate == job:
                self.queue.add((ns, name))

    def _samples(self) -> Iterator[RolloutSample]:
        for (namespace, name), body in list(self.known.items()):
            status = body.get("status") or {}
            yield RolloutSample(
                namespace,
                name,
                str(status.get("phase") or "Pending"),
                int(status.get("candidateWeight") or 0),
                status.get("pauseReason"),
            )

    # -- the worker ------------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                requeue = await self.reconcile(key)
            except Exception as exc:
                delay = self.queue.add_rate_limited(key)
                level = logging.INFO if isinstance(exc, ApiError) else logging.ERROR
                logger.log(
                    level,
                    "reconcile of ModelRollout %s/%s failed (retry in %.1fs): %s",
                    *key,
                    delay,
                    exc,
                    exc_info=level >= logging.ERROR,
                )
            else:
                self.queue.forget(key)
                if requeue is not None:
                    self.queue.add_after(key, requeue)
            finally:
                self.queue.done(key)

    def _path(self, namespace: str, name: str, subresource: str | None = None) -> str:
        return self.client.path(
            api.PLURAL,
            namespace,
            name,
            group=naming.GROUP,
            version=naming.VERSION,
            subresource=subresource,
        )

    def _route_path(self, namespace: str, name: str) -> str:
        return self.client.path(
            route.PLURAL, namespace, name, group=route.GROUP, version=route.VERSION
        )

    async def reconcile(self, key: Key) -> float | None:
        """One look at one rollout; returns when to look again (None: on the next event)."""
        namespace, name = key
        try:
            body = await self.client.get(self._path(namespace, name))
        except ApiError as exc:
            if exc.not_found:
                self.known.pop(key, None)
                self.metrics.forget(*key)
                return None
            raise
        self.known[key] = body
        try:
            rollout = api.ModelRollout.model_validate(body)
        except ValidationError as exc:
            logger.warning("ModelRollout %s/%s is invalid: %s", namespace, name, exc)
            await self._post(body, "Warning", "InvalidSpec", str(exc)[:1024])
            return None
        spec = rollout.spec
        analysed = [m.name for m in spec.analysis.metrics] if spec.analysis else []
        self.metrics.start(namespace, name, analysed)
        route_body, weights = await self._read_route(namespace, spec)
        job = CandidateJob.from_body(self.jobs((namespace, spec.candidate.fine_tune_job)))
        now = self.clock()
        request = analysis_due(rollout, now)
        run = await self._analyse(rollout, request) if request is not None else None
        decision = decide(Observation(rollout, self.clock(), weights, job, run))
        await self._execute(key, body, rollout, route_body, decision)
        return decision.requeue_after

    async def _read_route(
        self, namespace: str, spec: api.ModelRolloutSpec
    ) -> tuple[dict[str, Any] | None, route.RouteWeights | str]:
        try:
            body = await self.client.get(self._route_path(namespace, spec.target.name))
        except ApiError as exc:
            if exc.not_found:
                return None, "not found"
            raise
        weights = route.read_weights(
            body, spec.target.rule_index, spec.baseline.backend_ref, spec.candidate.backend_ref
        )
        return body, weights

    def _prometheus_for(self, spec: api.AnalysisSpec) -> PrometheusHttpClient:
        address = (
            spec.prometheus.address if spec.prometheus else self.settings.rollout_prometheus_url
        )
        client = self._prometheus.get(address)
        if client is None:
            client = PrometheusHttpClient(
                address, timeout=self.settings.rollout_prometheus_timeout_seconds
            )
            self._prometheus[address] = client
        return client

    async def _analyse(self, rollout: api.ModelRollout, request: AnalysisRequest) -> AnalysisRun:
        spec = rollout.spec.analysis
        assert spec is not None and rollout.status is not None
        results = await analysis.measure_all(spec, request.context, self._prometheus_for(spec))
        statuses = analysis.fold(spec, rollout.status.metrics, results, new_step=request.new_step)
        outcome = analysis.decide(
            spec, statuses, step=request.step, step_intervals=request.step_intervals
        )
        return AnalysisRun(results, statuses, outcome)

    # -- carrying a decision out -----------------------------------------------------------------
    async def _execute(
        self,
        key: Key,
        body: dict[str, Any],
        rollout: api.ModelRollout,
        route_body: dict[str, Any] | None,
        decision: Decision,
    ) -> None:
        namespace, name = key
        spec = rollout.spec
        if decision.set_weight is not None and route_body is not None:
            new = route.with_weights(
                route_body,
                spec.target.rule_index,
                spec.baseline.backend_ref,
                spec.candidate.backend_ref,
                decision.set_weight,
            )
            if new is not None:
                # A replace fenced by the route's resourceVersion: a concurrent edit is a 409
                # and the rollout is reconciled again on what is there.
                await self.client.replace(self._route_path(namespace, spec.target.name), new)
                logger.info(
                    "%s/%s: HTTPRoute %s candidate weight %d",
                    namespace,
                    name,
                    spec.target.name,
                    decision.set_weight,
                )
        patch = merge_patch(_status_doc(rollout.status), _status_doc(decision.status))
        if patch:
            seen = (body.get("metadata") or {}).get("resourceVersion")
            fence = {"metadata": {"resourceVersion": str(seen)}} if seen else {}
            try:
                updated = await self.client.patch(
                    self._path(namespace, name, "status"), {**fence, "status": patch}
                )
            except ApiError as exc:
                if exc.not_found:
                    return
                raise
            body = updated
            self.known[key] = updated
        if decision.remove_annotations:
            acted = rollout.metadata.annotations
            await self._remove_annotations(key, body, acted, decision.remove_annotations)
        self.metrics.record(namespace, name, decision.measured, decision.aborted, decision.promoted)
        for event in decision.events:
            task = asyncio.create_task(self._post(body, event.type, event.reason, event.message))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _remove_annotations(
        self, key: Key, body: dict[str, Any], acted: Mapping[str, str], names: list[str]
    ) -> None:
        """Remove the steering annotations acted on -- only while they still hold the value
        acted on (a person may set one again meanwhile: that is a new request)."""
        for _ in range(3):
            meta = body.get("metadata") or {}
            current = meta.get("annotations") or {}
            gone = {n: None for n in names if n in current and current[n] == acted.get(n)}
            if not gone:
                return
            patch = {
                "metadata": {"resourceVersion": meta.get("resourceVersion"), "annotations": gone}
            }
            try:
                self.known[key] = await self.client.patch(self._path(*key), patch)
                return
            except ApiError as exc:
                if exc.not_found:
                    return
                if not exc.conflict:
                    raise
            body = await self.client.get(self._path(*key))

    async def _post(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = body.get("metadata") or {}
        involved = {
            "apiVersion": naming.API_VERSION,
            "kind": api.KIND,
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        }
        await self.events.post(involved, type_, reason, message)
