"""The runtime: feeds snapshots to :func:`~kubetune_operator.lifecycle.decide` and carries
out its plans against the API server.

Level-triggered: every watch event (the job, its pods, node readiness) and every timer
only *enqueues* the job; a worker then looks at the whole current state. A missed or
duplicated event therefore never matters, and a restarted operator simply reconciles
every job once.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp

from kubetune.api.status import TERMINAL_PHASES
from kubetune.api.validation import ValidationReport, validate_manifest
from kubetune_operator import naming, queueing, resync
from kubetune_operator import profiles as job_profiles
from kubetune_operator.admission import Capacity
from kubetune_operator.cache import JobKey, Snapshot
from kubetune_operator.events import EventRecorder
from kubetune_operator.goodput import SECONDS_PER_HOUR
from kubetune_operator.kube import STRATEGIC_MERGE_PATCH, ApiError, KubeClient
from kubetune_operator.lifecycle import decide
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.observed import (
    ChildConflict,
    CreateRefusal,
    Observed,
    PodView,
    ProgressSample,
    controller_owner,
    parse_time,
)
from kubetune_operator.plan import (
    ApplyConfigMap,
    CreatePod,
    DeleteJob,
    DeletePod,
    DeleteWorkload,
    EnsureNetworkPolicy,
    EnsureService,
    EnsureWorkload,
    Event,
    FinishWorkload,
    Plan,
    ReleaseWorkload,
    UngatePod,
)
from kubetune_operator.progress import describe_error, fetch_document, new_session, progress_url
from kubetune_operator.reasons import Reason
from kubetune_operator.reports import ReportCache, job_version
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.status import CONDITION_ADMITTED, CONDITION_PROGRESS_KNOWN, merge_patch
from kubetune_operator.tenancy import TenantPolicies
from kubetune_operator.workqueue import WorkQueue

logger = logging.getLogger("kubetune.operator")


#: Conditions whose changes may wait for the next write (they never change the phase): the
#: gang being placed is followed within moments by it running, one write covers both; a
#: flapping progress endpoint must not cost a status write per poll.
COSMETIC_CONDITIONS = frozenset({CONDITION_ADMITTED, CONDITION_PROGRESS_KNOWN})

#: Progress documents fetched at once (each bounded in size and time by progress.py).
PROGRESS_FETCH_CONCURRENCY = 64

#: Least time between two cache resyncs (each is a paginated LIST of jobs and of pods).
RESYNC_MIN_SPACING_SECONDS = 5.0


class ChildConflictError(Exception):
    """A child's name is taken by an object the job does not own: the plan stops there (its
    later steps -- pods, gates -- must not build on someone else's object)."""

    def __init__(self, conflict: ChildConflict) -> None:
        super().__init__(f"{conflict.kind} {conflict.name} is not ours (owner: {conflict.owner})")
        self.conflict = conflict


def material(status: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a status that must be written at once: phase, counters, times and the
    status of each phase-bearing condition (not reasons, messages, progress numbers or the
    GPU-hour sums, which grow with every look)."""
    out = {k: v for k, v in status.items() if k not in ("progress", "conditions", "gpuHours")}
    out["conditions"] = sorted(
        (c.get("type"), c.get("status"))
        for c in status.get("conditions") or []
        if c.get("type") not in COSMETIC_CONDITIONS
    )
    return out


class Controller:
    """One per operator process (the leader)."""

    def __init__(
        self, client: KubeClient, settings: OperatorSettings, metrics: OperatorMetrics
    ) -> None:
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.cache = Snapshot()
        self.queue: WorkQueue[JobKey] = WorkQueue()
        self._tasks: list[asyncio.Task[None]] = []
        self._reports: ReportCache[ValidationReport] = ReportCache()
        self.events = EventRecorder(
            client,
            naming.MANAGER,
            settings.identity,
            reporting_component=f"{naming.GROUP}/operator",
        )
        self._progress: dict[JobKey, ProgressSample] = {}
        self._ungated_since: dict[tuple[str, int], datetime] = {}
        self._configmaps: dict[str, str] = {}  # job uid -> hash of the data last written
        self._services: set[str] = set()  # job uids whose Service exists
        # job uid -> (kind, name) -> a child name taken by an object the job does not own
        self._conflicts: dict[str, dict[tuple[str, str], ChildConflict]] = {}
        # job uid -> the API server's refusal of its last pod create (until one succeeds)
        self._refusals: dict[str, CreateRefusal] = {}
        self._last_status_write: dict[JobKey, float] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None
        self._fetch_slots = asyncio.Semaphore(PROGRESS_FETCH_CONCURRENCY)
        self._resync_now = asyncio.Event()
        self._admission = asyncio.Lock()
        # Tenant guardrail tiers (ConfigMaps in the operator's namespace) and namespace labels.
        self.tenants = TenantPolicies(client, settings.operator_namespace)
        # Team defaults: profiles read for jobs not resolved yet (profiles.py).
        self.profile_reader = job_profiles.ProfileReader(client)
        self._profile_sets: dict[JobKey, job_profiles.ProfileSet] = {}
        #: Jobs created after this are counted from zero in the GPU-time counters.
        self._started_at = datetime.now(UTC).replace(microsecond=0)
        #: Kueue's Workload API is served and watched (set by the runner before kopf starts).
        self.kueue = False
        self._priorities: dict[str, int | None] = {}  # PriorityClass name -> value
        metrics.watch_jobs(self._phases)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the workers and the progress poller (inside kopf's task tree, so they stop
        with the operator)."""
        for i in range(self.settings.workers):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"worker-{i}"))
        self._tasks.append(asyncio.create_task(self._poll_progress(), name="progress-poller"))
        if self.settings.resync_seconds:
            self._tasks.append(asyncio.create_task(self._resync_loop(), name="resync"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.drain()
        self.queue.close()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def drain(self) -> None:
        """Wait for background Event posts (tests, shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def _phases(self) -> list[tuple[str, str]]:
        return [
            (key[0], str((body.get("status") or {}).get("phase") or "Pending"))
            for key, body in self.cache.iter_jobs()
        ]

    # -- events from kopf ----------------------------------------------------------------------
    def job_event(self, event_type: str | None, key: JobKey) -> None:
        if event_type == "DELETED":
            uid = ((self.cache.job(key) or {}).get("metadata") or {}).get("uid")
            if uid:
                self.events.forget(str(uid))
                self._reports.forget(str(uid))
            self.cache.job_deleted(key)
            self.queue.discard(key)
            self._progress.pop(key, None)
            self._last_status_write.pop(key, None)
            self._profile_sets.pop(key, None)
            self.metrics.forget_job(*key)
            return
        self.queue.add(key)

    def pod_event(self, event_type: str | None, namespace: str, name: str, job: str) -> None:
        if event_type == "DELETED":
            self.cache.pod_deleted(namespace, name)
        self.queue.add((namespace, job))

    def node_event(self, name: str, changed: bool) -> None:
        if changed:
            for key in self.cache.jobs_on_node(name):
                self.queue.add(key)

    # -- reconcile -----------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            self.metrics.queue_depth.set(len(self.queue))
            started = time.perf_counter()
            try:
                requeue = await self.reconcile(key)
            except Exception as exc:
                self.metrics.reconcile_errors.inc()
                delay = self.queue.add_rate_limited(key)
                expected = isinstance(exc, ApiError | ChildConflictError)
                level = logging.INFO if expected else logging.ERROR
                logger.log(
                    level,
                    "reconcile %s/%s failed (retry in %.1fs): %s",
                    *key,
                    delay,
                    exc,
                    exc_info=level >= logging.ERROR,
                )
            else:
                self.queue.forget(key)
                if requeue is not None:
                    self.queue.add_after(key, requeue)
                self._record_job_series(key)
            finally:
                self.metrics.reconcile_duration.observe(time.perf_counter() - started)
                self.queue.done(key)

    def _record_job_series(self, key: JobKey) -> None:
        """Feed the job's per-job series from its status as stored (after this reconcile's
        write, if any): attempts, and the GPU-hour sums -- only what the status holds, so a
        value computed but not written (coalesced, refused) is never reported."""
        body = self.cache.job(key)
        status = (body or {}).get("status") or {}
        self.metrics.record_attempts(key[0], key[1], int(status.get("attempts") or 0))
        hours = status.get("gpuHours")
        if body is None or not isinstance(hours, Mapping):
            return
        policy = (body.get("spec") or {}).get("runPolicy") or {}
        labels = (body.get("metadata") or {}).get("labels") or {}
        queue = labels.get(naming.KUEUE_QUEUE_LABEL) or policy.get("queueName") or ""
        budget = policy.get("gpuHourBudget")
        born = parse_time((body.get("metadata") or {}).get("creationTimestamp"))
        self.metrics.record_gpu_time(
            key[0],
            str(queue),
            key[1],
            float(hours.get("allocated") or 0.0) * SECONDS_PER_HOUR,
            float(hours.get("productive") or 0.0) * SECONDS_PER_HOUR,
            float(budget) * SECONDS_PER_HOUR if budget else None,
            counted_from_zero=born is not None and born >= self._started_at,
        )

    async def _report(self, raw: Mapping[str, Any]) -> ValidationReport:
        """``validate_manifest`` once per spec version. It evaluates the CEL rules in pure
        Python (~10 ms): run in a thread so a burst of new jobs does not stall the event
        loop (and with it every other job's I/O)."""
        uid, generation, digest, size = job_version(raw)
        report = self._reports.get(uid, generation, digest)
        if report is None:
            doc = {k: v for k, v in raw.items() if k != "status"}
            report = await asyncio.to_thread(validate_manifest, doc)
            self._reports.put(uid, generation, digest, report, size)
        return report

    def observe(self, key: JobKey, now: datetime | None = None) -> Observed | None:
        raw = self.cache.job(key)
        if raw is None:
            return None
        # The job as decide sees it: its own spec laid over its (frozen) profiles.
        raw, resolution = job_profiles.resolve_job(raw, self._profile_sets.get(key))
        obs = Observed(
            raw=raw,
            profiles=resolution,
            pods=self.cache.pods_of(key),
            nodes=self.cache.node_map(),
            progress=self._progress.get(key),
            now=now or datetime.now(UTC),
            tenant_tiers=self.tenants.for_namespace(key[0]),
        )
        if self.kueue:
            obs = dataclasses.replace(
                obs,
                kueue=True,
                workloads=self.cache.workloads_of(key),
                flavors=self.cache.flavor_map(),
            )
        conflicts = self._conflicts.get(obs.uid)
        if conflicts:
            obs = dataclasses.replace(obs, conflicts=tuple(conflicts.values()))
        refusal = self._refusals.get(obs.uid)
        if refusal is not None:
            obs = dataclasses.replace(obs, refusal=refusal)
        attempt = obs.attempt
        gang = [p for p in obs.pods if p.owner_uid == obs.uid and p.attempt == attempt]
        if self._may_release(obs, gang):
            obs = dataclasses.replace(obs, capacity=Capacity.of(self.cache.other_pods(key)))
        mem_key = (obs.uid, attempt)
        if not (gang and all(not p.gates for p in gang)):
            self._ungated_since.pop(mem_key, None)
            return obs
        ungated_since = self._ungated_since.setdefault(mem_key, obs.now)
        return dataclasses.replace(obs, ungated_since=ungated_since)

    @staticmethod
    def _may_release(obs: Observed, gang: list[PodView]) -> bool:
        """Could this reconcile lift the gang's gates (so admission needs the capacity)?
        Only for a gang not created yet or still gated by us, and not behind Kueue."""
        raw_spec = obs.raw.get("spec") or {}
        if (raw_spec.get("runPolicy") or {}).get("queueName"):
            return False
        if str((obs.raw.get("status") or {}).get("phase")) in TERMINAL_PHASES:
            return False
        return not gang or any(p.gated for p in gang)

    async def reconcile(self, key: JobKey) -> float | None:
        obs = self.observe(key)
        if obs is None:
            return None
        report = None
        if str((obs.raw.get("status") or {}).get("phase")) not in TERMINAL_PHASES:
            # Finished jobs need no verdict: a restarted operator must not re-validate
            # thousands of old jobs before serving the live ones.
            await self.tenants.refresh(key[0])
            if job_profiles.is_frozen(obs.raw):
                self._profile_sets.pop(key, None)
            else:
                self._profile_sets[key] = await self.profile_reader.read(key[0])
                obs = self.observe(key) or obs
            report = await self._report(obs.raw)
            obs = self.observe(key) or obs  # the world may have moved while validating
        plan = decide(obs, self.settings, report)
        if any(isinstance(a, UngatePod) for a in plan.actions):
            # Releasing a gang takes room other gangs' admission counts on: one at a time,
            # each decided on a view that includes the gangs released before it.
            async with self._admission:
                obs = self.observe(key)
                if obs is None:
                    return None
                plan = decide(obs, self.settings, report)
                await self.execute(key, obs, plan)
            return plan.requeue_after
        wait = self._defer_cosmetic(key, obs, plan)
        if wait is not None:
            return wait if plan.requeue_after is None else min(wait, plan.requeue_after)
        await self.execute(key, obs, plan)
        return plan.requeue_after

    def _defer_cosmetic(self, key: JobKey, obs: Observed, plan: Plan) -> float | None:
        """Seconds to wait before writing a status change that is only cosmetic (a summary
        like "queued: 1/2 placed", a message, progress numbers) when the job's status was
        written less than ``status_coalesce_seconds`` ago; None to act now. Phase and
        condition-status changes, and any plan with actions, are never deferred."""
        window = self.settings.status_coalesce_seconds
        if not window or plan.status is None or plan.actions or plan.events or plan.metrics:
            return None
        if material(dict(obs.raw.get("status") or {})) != material(plan.status):
            return None
        elapsed = time.monotonic() - self._last_status_write.get(key, 0.0)
        return window - elapsed if elapsed < window else None

    # -- execution -----------------------------------------------------------------------------
    async def execute(self, key: JobKey, obs: Observed, plan: Plan) -> None:
        """Carry out a plan with as few sequential round trips as its safety allows.

        A plan that deletes (a restart, a release, a verdict) writes its status FIRST: the
        status is the record that the deletion was intended, so a crash in between is
        resumed, never misread as pods vanishing on their own. A plan that only creates may
        write its status alongside the ConfigMap and Service: new pods are self-describing
        (their attempt label wins over an older status). Then the remaining actions in order,
        runs of one kind in parallel (a gang's pods together, then their gates).
        """
        destructive = any(
            isinstance(a, DeletePod | DeleteJob | DeleteWorkload | ReleaseWorkload)
            for a in plan.actions
        )
        prelude: list[Any] = []
        rest = list(plan.actions)
        if not destructive:
            while rest and isinstance(
                rest[0], ApplyConfigMap | EnsureService | EnsureNetworkPolicy
            ):
                prelude.append(rest.pop(0))
        if destructive:
            if not await self._write_status(key, obs, plan):
                return
        else:
            results = await asyncio.gather(
                self._write_status(key, obs, plan),
                *(self._act(obs, a) for a in prelude),
                return_exceptions=True,
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
            if results[0] is False:
                return
        self.metrics.record(plan.metrics, namespace=key[0])
        batch: list[Any] = []
        for action in rest:
            if batch and type(batch[0]) is not type(action):
                await self._run_batch(obs, batch)
                batch = []
            batch.append(action)
        if batch:
            await self._run_batch(obs, batch)
        # The whole plan went through: nothing it needed is blocked any more.
        self._conflicts.pop(obs.uid, None)
        for event in plan.events:
            # Best effort and off the critical path: the next job need not wait for Events.
            task = asyncio.create_task(self._post_event(obs, event))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _write_status(self, key: JobKey, obs: Observed, plan: Plan) -> bool:
        """Patch the status subresource; False if the job is gone."""
        if plan.status is None:
            return True
        patch = merge_patch(dict(obs.raw.get("status") or {}), plan.status)
        if not patch:
            return True
        namespace, name = key
        path = self.client.path(
            naming.PLURAL,
            namespace,
            name,
            group=naming.GROUP,
            version=naming.VERSION,
            subresource="status",
        )
        # Fencing: the write carries the resourceVersion the plan was decided on, so the API
        # server refuses it (409) if anything changed the job since -- a newer leader's
        # write above all. A deposed leader that still believes it leads cannot overwrite
        # its successor's status; the refused plan is re-decided on the current object.
        seen = (obs.raw.get("metadata") or {}).get("resourceVersion")
        fence = {"metadata": {"resourceVersion": str(seen)}} if seen else {}
        try:
            updated = await self.client.patch(path, {**fence, "status": patch})
        except ApiError as exc:
            if exc.not_found:
                return False  # deleted meanwhile
            self.metrics.status_write_failures.labels(code=str(exc.status)).inc()
            if exc.conflict:
                await self._refresh_job(key, path)
                raise
            if not (exc.status == 422 and "progress" in patch):
                raise
            # The progress numbers come from the pod (untrusted): if the API server refuses
            # them, the phase, conditions and the plan's actions must still go through.
            logger.warning(
                "status of %s/%s refused (%s); writing it without progress", *key, exc.message
            )
            patch = {k: v for k, v in patch.items() if k != "progress"}
            if not patch:
                return True
            try:
                updated = await self.client.patch(path, {**fence, "status": patch})
            except ApiError as again:
                if again.not_found:
                    return False
                self.metrics.status_write_failures.labels(code=str(again.status)).inc()
                raise
        self.cache.wrote_job(key, updated)
        self._last_status_write[key] = time.monotonic()
        return True

    async def _refresh_job(self, key: JobKey, status_path: str) -> None:
        """After a refused (stale) status write: read the job as it is now into the cache,
        so the retry decides on it instead of waiting for the watch to deliver it."""
        try:
            fresh = await self.client.get(status_path.removesuffix("/status"))
        except ApiError:
            return  # the retry finds out (deleted: the watch says so)
        self.cache.wrote_job(key, fresh)

    async def _run_batch(self, obs: Observed, batch: list[Any]) -> None:
        results = await asyncio.gather(*(self._act(obs, a) for a in batch), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def _act(self, obs: Observed, action: Any) -> None:
        ns = obs.namespace
        client = self.client
        if isinstance(action, CreatePod):
            try:
                created = await client.create(
                    client.path("pods", ns) + f"?fieldManager={naming.FIELD_MANAGER}",
                    action.body,
                )
            except ApiError as exc:
                if exc.already_exists:
                    await self._claim(obs, "Pod", client.path("pods", ns, action.name))
                    return
                if 400 <= exc.status < 500 and exc.status not in (404, 409, 429):
                    # Decided on at the next reconcile: a condition or a verdict.
                    self._refusals[obs.uid] = CreateRefusal(
                        action.name, exc.status, exc.reason, exc.message[:1024], obs.generation
                    )
                await self._post_event(
                    obs, Event("Warning", Reason.FAILED_CREATE, f"pod {action.name}: {exc.message}")
                )
                raise
            self._refusals.pop(obs.uid, None)
            self.cache.wrote_pod(ns, created)
        elif isinstance(action, DeletePod):
            try:
                deleted = await client.delete(
                    client.path("pods", ns, action.name),
                    uid=action.uid,
                    grace_period=0 if action.force else None,
                )
            except ApiError as exc:
                if exc.not_found:
                    self._resync_now.set()  # the cache may have missed its deletion
                if exc.not_found or exc.conflict:
                    return
                raise
            if deleted.get("kind") == "Pod":
                self.cache.wrote_pod(ns, deleted)
        elif isinstance(action, UngatePod):
            body = {"spec": {"schedulingGates": [{"$patch": "delete", "name": naming.GANG_GATE}]}}
            try:
                patched = await client.patch(
                    client.path("pods", ns, action.name), body, STRATEGIC_MERGE_PATCH
                )
            except ApiError as exc:
                if exc.not_found:
                    self._resync_now.set()
                    return
                raise
            self.cache.wrote_pod(ns, patched)
        elif isinstance(action, ApplyConfigMap):
            await self._apply_config_map(obs, action.body)
        elif isinstance(action, EnsureService):
            if obs.uid in self._services:
                return
            try:
                await client.create(client.path("services", ns), action.body)
            except ApiError as exc:
                if not exc.already_exists:
                    raise
                name = str(action.body["metadata"]["name"])
                await self._claim(obs, "Service", client.path("services", ns, name))
            self._services.add(obs.uid)
        elif isinstance(action, EnsureNetworkPolicy):
            path = client.path("networkpolicies", ns, group="networking.k8s.io")
            try:
                await client.create(path, action.body)
            except ApiError as exc:
                if not exc.already_exists:
                    raise
                name = str(action.body["metadata"]["name"])
                await self._claim(obs, "NetworkPolicy", f"{path}/{name}")
        elif isinstance(action, DeleteJob):
            try:
                await client.delete(
                    client.path(
                        naming.PLURAL, ns, obs.name, group=naming.GROUP, version=naming.VERSION
                    ),
                    uid=action.uid,
                )
            except ApiError as exc:
                if not (exc.not_found or exc.conflict):
                    raise
            logger.info("deleted %s/%s: ttlSecondsAfterFinished expired", ns, obs.name)
        elif isinstance(action, EnsureWorkload | DeleteWorkload | ReleaseWorkload | FinishWorkload):
            await self._act_workload(obs, action)

    # -- Kueue Workloads (queueing.py) ---------------------------------------------------------
    def _workload_path(self, namespace: str, name: str | None = None, status: bool = False) -> str:
        return self.client.path(
            queueing.WORKLOADS,
            namespace,
            name,
            group=queueing.KUEUE_GROUP,
            version=queueing.KUEUE_VERSION,
            subresource="status" if status else None,
        )

    async def _priority(self, name: str) -> int | None:
        """A PriorityClass's value (cached: they are rarely edited, and Kueue copies the
        value into the Workload once, at creation, just as the API server does for pods)."""
        if name not in self._priorities:
            path = self.client.path("priorityclasses", None, name, group="scheduling.k8s.io")
            try:
                body = await self.client.get(path)
            except ApiError as exc:
                if not exc.not_found:
                    raise
                return None  # the pods' create names it; the API server says what is wrong
            self._priorities[name] = int(body.get("value") or 0)
        return self._priorities[name]

    async def _act_workload(
        self,
        obs: Observed,
        action: EnsureWorkload | DeleteWorkload | ReleaseWorkload | FinishWorkload,
    ) -> None:
        ns = obs.namespace
        key = (ns, obs.name)
        if isinstance(action, EnsureWorkload):
            body = copy.deepcopy(action.body)
            ref = body["spec"].get("priorityClassRef")
            if ref:
                value = await self._priority(str(ref["name"]))
                if value is None:
                    body["spec"].pop("priorityClassRef")
                else:
                    body["spec"]["priority"] = value
            try:
                created = await self.client.create(self._workload_path(ns), body)
            except ApiError as exc:
                if not exc.already_exists:
                    raise
                created = await self._claim(obs, "Workload", self._workload_path(ns, action.name))
            self.cache.wrote_workload(key, created)
            return
        if isinstance(action, DeleteWorkload):
            try:
                await self.client.delete(self._workload_path(ns, action.name), uid=action.uid)
            except ApiError as exc:
                if not (exc.not_found or exc.conflict):
                    raise
            self.cache.workload_deleted(key, action.name)
            return
        await self._patch_workload_status(obs, action)

    async def _patch_workload_status(
        self, obs: Observed, action: ReleaseWorkload | FinishWorkload
    ) -> None:
        """Read-modify-write of the Workload's status (fenced by its resourceVersion: Kueue
        writes it too). Conditions are a list, so a merge patch carries all of them."""
        path = self._workload_path(obs.namespace, action.name)
        try:
            current = await self.client.get(path)
        except ApiError as exc:
            if exc.not_found:
                return
            raise
        meta = current.get("metadata") or {}
        if str(meta.get("uid")) != action.uid:
            return
        status = current.get("status") or {}
        conditions: list[dict[str, Any]] = [dict(c) for c in status.get("conditions") or []]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        generation = meta.get("generation")

        def put(kind: str, state: str, reason: str, message: str) -> None:
            old = next((c for c in conditions if c.get("type") == kind), None)
            new = queueing.condition(kind, state, reason, message, now, generation)
            if old is not None and old.get("status") == state:
                new["lastTransitionTime"] = old.get("lastTransitionTime", now)
            conditions[:] = [c for c in conditions if c.get("type") != kind] + [new]

        patch: dict[str, Any]
        if isinstance(action, ReleaseWorkload):
            if not status.get("admission"):
                return  # already released
            put(queueing.QUOTA_RESERVED, "False", "Pending", action.message)
            put(queueing.ADMITTED, "False", "NoReservation", "The workload has no reservation")
            put(
                queueing.REQUEUED,
                "True" if action.requeue else "False",
                action.reason,
                action.message,
            )
            patch = {"admission": None, "conditions": conditions}
        else:
            if any(
                c.get("type") == queueing.FINISHED and c.get("status") == "True" for c in conditions
            ):
                return
            put(
                queueing.FINISHED,
                "True",
                "Succeeded" if action.succeeded else "Failed",
                action.message,
            )
            patch = {"conditions": conditions}
        body = {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "status": patch}
        updated = await self.client.patch(path + "/status", body)
        self.cache.wrote_workload((obs.namespace, obs.name), updated)

    async def _apply_config_map(self, obs: Observed, body: dict[str, Any]) -> None:
        digest = hashlib.sha256(json.dumps(body["data"], sort_keys=True).encode()).hexdigest()
        if self._configmaps.get(obs.uid) == digest:
            return
        ns = obs.namespace
        try:
            await self.client.create(self.client.path("configmaps", ns), body)
        except ApiError as exc:
            if not exc.already_exists:
                raise
            path = self.client.path("configmaps", ns, body["metadata"]["name"])
            await self._claim(obs, "ConfigMap", path)
            await self.client.patch(
                path,
                {
                    "metadata": {"annotations": body["metadata"].get("annotations")},
                    "data": body["data"],
                },
            )
        self._configmaps[obs.uid] = digest

    async def _claim(self, obs: Observed, kind: str, path: str) -> dict[str, Any]:
        """An object of ``kind`` already exists at ``path``: return it if the job owns it
        (a retried plan, a restarted operator), else record a :class:`ChildConflict` and
        raise :class:`ChildConflictError` -- never adopt or overwrite someone else's object.

        A leftover of an earlier FineTuneJob with the same name (deleted: the name is ours
        now, so that owner is gone) is deleted, uid-guarded, to help the garbage collector;
        the job waits for it, then creates its own.
        """
        body = await self.client.get(path)  # NotFound: gone meanwhile, the retry creates it
        meta = body.get("metadata") or {}
        name = str(meta.get("name") or path.rsplit("/", 1)[-1])
        owner = controller_owner(meta)
        known = self._conflicts.get(obs.uid, {})
        if owner is not None and owner.get("uid") == obs.uid:
            known.pop((kind, name), None)
            return body
        earlier = (
            owner is not None
            and owner.get("kind") == naming.KIND
            and str(owner.get("apiVersion", "")).split("/")[0] == naming.GROUP
            and owner.get("name") == obs.name
        )
        described = (
            f"{owner.get('kind')} {owner.get('name')} (uid {owner.get('uid')})"
            if owner is not None
            else None
        )
        if earlier:
            described = f"an earlier {described}, since deleted"
        conflict = ChildConflict(
            kind, name, described, stale=earlier or bool(meta.get("deletionTimestamp"))
        )
        if earlier and meta.get("uid") and not meta.get("deletionTimestamp"):
            with contextlib.suppress(ApiError):
                await self.client.delete(path, uid=str(meta["uid"]))
        self._conflicts.setdefault(obs.uid, {})[(kind, name)] = conflict
        if not conflict.stale:
            logger.warning("%s/%s: %s", obs.namespace, obs.name, conflict.describe(obs.namespace))
        raise ChildConflictError(conflict)

    async def _post_event(self, obs: Observed, event: Event) -> None:
        """A core/v1 Event on the FineTuneJob (``kubectl describe ftj``): repeats aggregate
        into one Event (count, lastTimestamp), a per-job spam cap holds the rest back."""
        involved = {
            "apiVersion": naming.API_VERSION,
            "kind": naming.KIND,
            "name": obs.name,
            "namespace": obs.namespace,
            "uid": obs.uid,
        }
        await self.events.post(involved, event.type, event.reason, event.message)

    # -- resync --------------------------------------------------------------------------------
    async def _resync_loop(self) -> None:
        """Check the caches against a fresh LIST every ``resync_seconds``, and soon after an
        action met a pod the cache still had but the API server no longer has."""
        period = self.settings.resync_seconds
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resync_now.wait(), timeout=period)
            self._resync_now.clear()
            try:
                await self.resync_once()
            except Exception as exc:
                logger.warning("cache resync failed: %s", exc)
            await asyncio.sleep(RESYNC_MIN_SPACING_SECONDS)

    async def resync_once(self) -> None:
        """One resync: hide what the API server no longer has, reconcile the jobs touched."""
        for key in await resync.resync(self.client, self.cache, self.settings.namespaces):
            if self.cache.job(key) is None:
                self.job_event("DELETED", key)  # deleted in the gap: drop what we kept
            else:
                self.queue.add(key)

    # -- progress ------------------------------------------------------------------------------
    async def _poll_progress(self) -> None:
        """Pull the rank-0 progress document of every running job, every interval."""
        interval = self.settings.progress_interval_seconds
        self._http = new_session()
        while True:
            started = time.monotonic()
            try:
                await self.poll_once()
            except Exception:
                logger.exception("progress poll failed")
            await asyncio.sleep(max(0.1, interval - (time.monotonic() - started)))

    async def poll_once(self) -> None:
        # GPU time is not counted here: each reconcile reports the job's status.gpuHours
        # (_record_job_series), which counts every pod that holds GPUs, not just running gangs.
        targets: list[tuple[JobKey, str, int]] = []
        for key, body in self.cache.iter_jobs():
            status = body.get("status") or {}
            if status.get("phase") != "Running":
                continue
            attempt = int(status.get("attempts") or 1)
            uid = (body.get("metadata") or {}).get("uid")
            rank0 = next(
                (
                    p
                    for p in self.cache.pods_of(key)
                    if p.owner_uid == uid
                    and p.role == naming.ROLE_WORKER
                    and p.attempt == attempt
                    and p.rank == 0
                    and p.phase == "Running"
                    and not p.deleting
                ),
                None,
            )
            if rank0 is None:
                continue
            url = progress_url(
                self.settings.progress_url_template,
                rank0,
                namespace=key[0],
                job=key[1],
                attempt=attempt,
                port=self.settings.progress_port,
            )
            if url:
                targets.append((key, url, attempt))
        self._prune()
        if targets:
            await asyncio.gather(*(self._fetch(key, url, attempt) for key, url, attempt in targets))

    def _prune(self) -> None:
        """Forget per-job memory of jobs that no longer exist (bounded memory)."""
        live = {str((body.get("metadata") or {}).get("uid")) for _, body in self.cache.iter_jobs()}
        for uid, attempt in list(self._ungated_since):
            if uid not in live:
                del self._ungated_since[(uid, attempt)]
        for uid in list(self._configmaps):
            if uid not in live:
                del self._configmaps[uid]
        self._services &= live
        for uid in list(self._conflicts):
            if uid not in live:
                del self._conflicts[uid]
        for uid in list(self._refusals):
            if uid not in live:
                del self._refusals[uid]

    async def _fetch(self, key: JobKey, url: str, attempt: int) -> None:
        """Read one job's progress document into ``self._progress``.

        A good document refreshes the sample's time (it is the stall detector's evidence)
        but only re-queues the job when the document changed; a failed read records the
        error (the job reconciles to ProgressKnown=False) and counts in
        ``kubetune_progress_scrape_failures_total``. The document of a failed read is never
        replaced by "no progress".
        """
        if self._http is None:
            self._http = new_session()
        async with self._fetch_slots:  # the timeout starts once a slot is ours
            try:
                document = await fetch_document(
                    self._http, url, self.settings.progress_timeout_seconds
                )
            except Exception as exc:
                kind, text = describe_error(exc)
                self.metrics.progress_scrape_failures.labels(reason=kind).inc()
                logger.info("progress of %s/%s from %s: %s", *key, url, text)
                self._sampled(key, attempt, error=f"{text} (GET {url})")
                return
        self._sampled(key, attempt, document=document)

    def _sampled(
        self,
        key: JobKey,
        attempt: int,
        *,
        document: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        now = datetime.now(UTC)
        previous = self._progress.get(key)
        same_attempt = previous is not None and previous.attempt == attempt
        if error is not None:
            if same_attempt and previous is not None and previous.error == error:
                return  # nothing new to report
            kept = previous if same_attempt and previous is not None else None
            self._progress[key] = ProgressSample(
                document=kept.document if kept is not None else {},
                fetched_at=kept.fetched_at if kept is not None else now,
                attempt=attempt,
                error=error,
            )
            self.queue.add(key)
            return
        assert document is not None
        sample = ProgressSample(document=document, fetched_at=now, attempt=attempt)
        self._progress[key] = sample
        unchanged = (
            same_attempt
            and previous is not None
            and previous.error is None
            and previous.document == document
        )
        if not unchanged:
            self.queue.add(key)
