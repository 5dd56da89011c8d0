"""The FineTunePipeline worker: reads a pipeline, asks :func:`plan.next_actions`, acts.

Level-triggered like the other controllers: a pipeline event, or an event of a FineTuneJob
it owns, only enqueues the pipeline; the worker reads the pipeline fresh and its stage jobs
from the operator's job cache, then deletes (a retried stage's failed job, fenced by its
uid), creates (the next stage's job; ``AlreadyExists`` means a cache that lagged our own
create and is harmless: the name is deterministic) and patches the status subresource,
fenced by the resourceVersion it decided on. Leader-only, and only where the CRD is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubetune.api import pipeline as api
from kubetune_operator import naming
from kubetune_operator.discovery import kubetune_serves
from kubetune_operator.events import EventRecorder
from kubetune_operator.kube import ApiError, KubeClient
from kubetune_operator.pipeline.plan import Actions, next_actions, stage_job_name
from kubetune_operator.status import merge_patch
from kubetune_operator.workqueue import WorkQueue

logger = logging.getLogger("kubetune.operator.pipeline")

Key = tuple[str, str]
JobLookup = Callable[[Key], Mapping[str, Any] | None]
WORKERS = 2


async def pipelines_served(client: KubeClient) -> bool:
    """Whether the API server serves kubetune.io FineTunePipelines (the CRD is installed)."""
    return await kubetune_serves(client, api.PLURAL, api.KIND, logger)


def owning_pipeline(job: Mapping[str, Any]) -> str | None:
    """The FineTunePipeline that owns a FineTuneJob, if one does."""
    for ref in (job.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == api.KIND and ref.get("apiVersion") == naming.API_VERSION:
            return str(ref.get("name"))
    return None


class PipelineController:
    """One per operator process (the leader)."""

    def __init__(
        self,
        client: KubeClient,
        events: EventRecorder,
        jobs: JobLookup,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.client = client
        self.events = events
        self.jobs = jobs
        self.clock = clock or (lambda: datetime.now(UTC))
        self.queue: WorkQueue[Key] = WorkQueue()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for i in range(WORKERS):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"pipeline-worker-{i}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self.queue.close()

    def event(self, event_type: str | None, key: Key) -> None:
        if event_type == "DELETED":
            self.queue.discard(key)
        else:
            self.queue.add(key)

    def job_event(self, namespace: str, job: Mapping[str, Any]) -> None:
        """A FineTuneJob changed: wake the pipeline that owns it."""
        owner = owning_pipeline(job)
        if owner:
            self.queue.add((namespace, owner))

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                await self.reconcile(key)
            except Exception as exc:
                delay = self.queue.add_rate_limited(key)
                level = logging.INFO if isinstance(exc, ApiError) else logging.ERROR
                logger.log(
                    level,
                    "reconcile of FineTunePipeline %s/%s failed (retry in %.1fs): %s",
                    *key,
                    delay,
                    exc,
                    exc_info=level >= logging.ERROR,
                )
            else:
                self.queue.forget(key)
            finally:
                self.queue.done(key)

    def _path(self, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        return self.client.path(
            api.PLURAL,
            namespace,
            name,
            group=naming.GROUP,
            version=naming.VERSION,
            subresource=sub,
        )

    def _job_path(self, namespace: str, name: str | None = None) -> str:
        return self.client.path(
            naming.PLURAL, namespace, name, group=naming.GROUP, version=naming.VERSION
        )

    async def reconcile(self, key: Key) -> Actions | None:
        """One look at one pipeline; returns what was decided (None: it is gone)."""
        namespace, name = key
        try:
            body = await self.client.get(self._path(namespace, name))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        jobs: dict[str, Mapping[str, Any]] = {}
        for stage in (body.get("spec") or {}).get("stages") or []:
            job_name = stage_job_name(name, str((stage or {}).get("name")))
            found = self.jobs((namespace, job_name))
            if found is not None:
                jobs[job_name] = found
        actions = next_actions(body, jobs, self.clock())
        await self._execute(namespace, body, actions)
        return actions

    async def _execute(self, namespace: str, body: dict[str, Any], actions: Actions) -> None:
        for gone in actions.delete:
            with contextlib.suppress(ApiError):  # already gone, or no longer that job
                await self.client.delete(self._job_path(namespace, gone.name), uid=gone.uid)
        for manifest in actions.create:
            try:
                await self.client.create(self._job_path(namespace), manifest)
            except ApiError as exc:
                if not exc.already_exists:
                    raise
        old = body.get("status") or {}
        new = json.loads(actions.status.model_dump_json(by_alias=True, exclude_none=True))
        patch = merge_patch(old, new)
        if patch:
            seen = (body.get("metadata") or {}).get("resourceVersion")
            fence = {"metadata": {"resourceVersion": str(seen)}} if seen else {}
            meta = body.get("metadata") or {}
            try:
                await self.client.patch(
                    self._path(namespace, str(meta.get("name")), "status"),
                    {**fence, "status": patch},
                )
            except ApiError as exc:
                if not exc.not_found:
                    raise
        meta = body.get("metadata") or {}
        involved = {
            "apiVersion": naming.API_VERSION,
            "kind": api.KIND,
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        }
        for event in actions.events:
            await self.events.post(involved, event.type, event.reason, event.message)
