"""The FineTuneJob state machine: from what is observed to what to do next.

:func:`decide` is pure -- it reads a snapshot (the job as stored, its pods, node readiness,
the latest progress document, the time) and returns a :class:`Plan`: the status to write,
the objects to create or delete, the Events to post and when to look again. The
controller executes plans; everything that must survive an operator restart lives in the
FineTuneJob's status (phase, attempts, condition timestamps) and in labelled pods, so a
fresh operator reaches the same decisions.

Phases: Pending -> Validating -> Queued -> Running -> Succeeded | Failed, plus Suspended.

* Validating: a CPU-only ``--validate-only`` pod checks model, data and config before
  any GPU is requested; a permanent verdict fails the job with the trainer's message.
* Queued: the gang of ``nodes`` pods exists behind the ``kubetune.io/gang`` scheduling
  gate until all of them exist, then waits to be placed (or for Kueue's admission). A
  gang not placed within ``schedulingTimeoutSeconds`` is released (its pods deleted, so
  it holds nothing), reported as ``GangUnschedulable`` and re-created after
  ``unschedulable_retry_seconds`` -- it does not count against ``backoffLimit`` (a full
  cluster is not the job's fault); ``activeDeadlineSeconds`` bounds the wait.
* Running: all pods run; progress is mirrored from rank 0; samples showing the step not
  advancing for ``stallTimeoutSeconds`` count as a retryable failure. A progress document
  that cannot be read is "progress unknown" (``ProgressKnown=False``), never a stall.
* A retryable failure replaces the whole gang as attempt N+1 after ``10s * 2^(n-1)``
  (capped); the trainer resumes from the newest complete checkpoint in the output
  location. A permanent failure, ``backoffLimit`` or the deadline fail the job.
* Suspended: pods are deleted, status and checkpoints kept; resuming re-creates the gang
  with the same attempt number (a suspension is not a failure). As with batch/v1 Job,
  ``startTime`` (and so the ``activeDeadlineSeconds`` clock) restarts on resume.
* GPU-hours (goodput.py): every decision advances ``status.gpuHours`` (allocated,
  productive, goodput). When ``runPolicy.gpuHourBudget`` is spent the job is Suspended
  with reason ``GPUHourBudgetExhausted`` -- not Failed: a terminal phase could never be
  resumed, while a suspension keeps the status and checkpoints, stops the gang gracefully
  (the trainer checkpoints on SIGTERM) and lifts by itself once the budget is raised or
  removed, exactly like ``runPolicy.suspend``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from kubetune.api import FineTuneJob
from kubetune.api.infra import RunPolicy
from kubetune.api.resolve import ResolutionError, ResolvedJob, resolve
from kubetune.api.status import (
    CONDITION_FITS_GPU_MEMORY,
    CONDITION_PROMOTABLE,
    TERMINAL_PHASES,
    AppliedProfile,
    FineTuneJobStatus,
    Lineage,
    Progress,
)
from kubetune.api.validation import ValidationReport, validate_manifest
from kubetune.contract.exit_codes import exit_reason
from kubetune.contract.plan import without_plan
from kubetune_operator import (
    evaluation,
    goodput,
    naming,
    policy,
    queueing,
    resource_plan,
    tenancy,
)
from kubetune_operator.admission import Verdict, admit
from kubetune_operator.failures import (
    Failure,
    classify_pod,
    node_gone,
    node_loss,
    node_loss_deadline,
    root_cause,
    startup_problem,
)
from kubetune_operator.gang import GangState, backoff_seconds, never_fits
from kubetune_operator.observed import Observed, PodView, parse_time
from kubetune_operator.plan import (
    ApplyConfigMap,
    CreatePod,
    DeleteJob,
    DeletePod,
    DeleteWorkload,
    EnsureNetworkPolicy,
    EnsureService,
    EnsureWorkload,
    FinishWorkload,
    MetricEvent,
    Plan,
    ReleaseWorkload,
    UngatePod,
)
from kubetune_operator.profiles import PROFILE_RETRY_SECONDS, PROFILE_WAIT_SECONDS
from kubetune_operator.progress import (
    INVALID_PREFIX,
    clip_summary,
    error_reason,
    map_progress,
    parse_document,
    step_summary,
)
from kubetune_operator.reasons import Reason
from kubetune_operator.render import (
    render_config_map,
    render_service,
    render_validation_pod,
    render_worker_pod,
)
from kubetune_operator.render.common import credentials_secret, image_of
from kubetune_operator.render.configmap import trainer_document
from kubetune_operator.render.networkpolicy import render_network_policy
from kubetune_operator.render.pods import spec_sections
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.status import (
    CONDITION_ADMITTED,
    CONDITION_CONFIG_WARNING,
    CONDITION_FAILED,
    CONDITION_POD_CREATION_FAILED,
    CONDITION_PROGRESS_KNOWN,
    CONDITION_RESTARTING,
    CONDITION_RUNNING,
    CONDITION_SUCCEEDED,
    CONDITION_SUSPENDED,
    CONDITION_UPDATES_PENDING,
    CONDITION_VALIDATED,
    MAX_MESSAGE,
    ConditionStatus,
    dump_status,
    get_condition,
    is_true,
    remove_condition,
    set_condition,
)

#: How long to wait for deleted pods to disappear before looking again anyway.
WAIT_FOR_DELETION_SECONDS = 5.0

#: True while an object under one of the job's child names (ConfigMap, Service, pod) is not
#: the job's own and is expected to go (a deleted namesake's leftovers being collected).
CONDITION_RESOURCE_CONFLICT = "ResourceConflict"


# -- decision -------------------------------------------------------------------------------------
def decide(
    obs: Observed, settings: OperatorSettings, report: ValidationReport | None = None
) -> Plan:
    """The next step for one FineTuneJob. Pure: same inputs, same plan."""
    return _Decision(obs, settings, report).run()


def _now(obs: Observed) -> datetime:
    now = obs.now if obs.now.tzinfo else obs.now.replace(tzinfo=UTC)
    return now.astimezone(UTC).replace(microsecond=0)


def _parse_status(raw: Any) -> FineTuneJobStatus:
    try:
        return FineTuneJobStatus.model_validate(raw or {})
    except ValidationError:
        return FineTuneJobStatus()


def _run_policy(obs: Observed) -> RunPolicy:
    """The run policy alone, typed: a finished job's spec may be invalid as a whole (it
    failed as ``InvalidSpec``), its ``ttlSecondsAfterFinished`` still applies."""
    try:
        return RunPolicy.model_validate((obs.raw.get("spec") or {}).get("runPolicy") or {})
    except ValidationError:  # not storable by the API server's schema
        return RunPolicy()


class _Decision:
    def __init__(
        self, obs: Observed, settings: OperatorSettings, report: ValidationReport | None
    ) -> None:
        self.obs = obs
        self.cfg = settings
        self.now = _now(obs)
        self.generation = obs.generation
        self.old_raw_status: dict[str, Any] = copy.deepcopy(dict(obs.raw.get("status") or {}))
        self.old = _parse_status(self.old_raw_status)
        self.st = self.old.model_copy(deep=True)
        self.plan = Plan()
        self.report = report
        self.job: FineTuneJob | None = None
        self.summary: str | None = None
        self.phase_message = ""
        self.validated_now = False
        self.blocked: str | None = None  # overrides the summary while pods cannot be created
        self.created_gang = False
        self.capacity_wait: Verdict | None = None  # the gang stays gated: no room for all
        self.holds: list[goodput.Holding] = []  # GPUs the job's pods hold (or held)
        self.gpu_resource = "nvidia.com/gpu"
        self.gpu_hours_due = False  # write status.gpuHours even if nothing else changed
        self.placement: queueing.Placement | None = None  # Kueue's flavor for the gang
        uid = obs.uid
        self.owned = [p for p in obs.pods if p.owner_uid == uid]
        self.workloads = [w for w in obs.workloads if w.owner_uid == uid]
        self.foreign = [p for p in obs.pods if p.owner_uid is not None and p.owner_uid != uid]
        self.workers = [p for p in self.owned if p.role == naming.ROLE_WORKER]
        self.validators = [p for p in self.owned if p.role == naming.ROLE_VALIDATION]

    # -- driver -----------------------------------------------------------------------------------
    def run(self) -> Plan:
        meta = self.obs.raw.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return self.plan  # garbage collection removes everything the job owns
        self._account()
        for pod in self.foreign:
            # Pods of an earlier FineTuneJob with the same name: help the garbage collector,
            # their names (and GPUs) are needed by this one.
            if not pod.deleting:
                self.plan.actions.append(DeletePod(pod.name, pod.uid))
        if self.st.phase in TERMINAL_PHASES:
            self._terminal()
            return self._finish()
        if self._child_conflicts():
            return self._finish()
        if self.foreign:
            self.summary = "waiting for pods of a deleted job with the same name to go"
            self.plan.requeue(WAIT_FOR_DELETION_SECONDS)
            return self._finish()
        if not self._profiles_resolved():
            return self._finish()
        if self.report is None:
            self.report = validate_manifest(
                {k: v for k, v in self.obs.raw.items() if k != "status"}
            )
        if self.report.job is None or self.report.errors:
            problems = "; ".join(str(p) for p in self.report.errors) or "unreadable manifest"
            set_condition(
                self.st,
                CONDITION_VALIDATED,
                "False",
                Reason.INVALID_SPEC,
                problems,
                self.now,
                self.generation,
            )
            self._fail(Reason.INVALID_SPEC, f"the FineTuneJob is invalid: {problems}")
            return self._finish()
        self.job = self.report.job
        self.st.observed_generation = self.generation
        forbidden = policy.violations(self.job.spec, self.cfg) + tenancy.violations(
            self.job.spec, self.obs.tenant_tiers
        )
        if forbidden:
            # Before any pod exists: the operator never creates what its policy forbids.
            problems = "; ".join(forbidden)
            self._fail_validation(
                Reason.FORBIDDEN_BY_POLICY,
                problems,
                f"the operator's policy forbids this job: {problems}",
            )
            return self._finish()
        res = self.job.spec.resources
        self.st.gpus = res.nodes * res.gpus_per_node
        self._warnings()
        # Suspension first (as batch/v1 Job): suspended time does not count against
        # activeDeadlineSeconds, and resuming restarts its clock before it is checked.
        if self.job.spec.run_policy.suspend:
            self._suspend()
            return self._finish()
        if self._budget_spent():
            return self._finish()
        self._resume_if_suspended()
        if self._deadline_exceeded() or self._creation_refused():
            return self._finish()
        if not is_true(self.st, CONDITION_VALIDATED):
            if not self.cfg.validation_enabled:
                set_condition(
                    self.st,
                    CONDITION_VALIDATED,
                    "True",
                    Reason.VALIDATION_DISABLED,
                    "validation pods are disabled in the operator configuration",
                    self.now,
                    self.generation,
                )
            elif not self._validate():
                return self._finish()
        self._gang()
        return self._finish()

    @property
    def spec_job(self) -> FineTuneJob:
        assert self.job is not None
        return self.job

    # -- helpers ----------------------------------------------------------------------------------
    def _delete(self, pods: Iterable[PodView]) -> int:
        count = 0
        queued = set(self.plan.pods_to_delete())
        for pod in pods:
            if not pod.deleting and pod.name not in queued:
                force = node_gone(pod, self.obs.nodes)
                self.plan.actions.append(DeletePod(pod.name, pod.uid, force=force))
                queued.add(pod.name)
                count += 1
        return count

    def _blocking(self, attempt: int) -> list[PodView]:
        """Old pods the next gang of ``attempt`` must wait for: same-attempt pods until they
        are gone (their names are reused), others while they may still hold GPUs (pods on
        lost nodes hold nothing the scheduler could give us)."""
        grace = self.cfg.node_lost_grace_seconds
        return [
            p
            for p in self.workers
            if p.attempt == attempt
            or not (p.terminated or node_loss(p, self.obs.nodes, self.now, grace))
        ]

    def _set(
        self,
        kind: str,
        state: ConditionStatus,
        reason: str,
        message: str,
        *,
        force: bool = False,
    ) -> bool:
        return set_condition(
            self.st,
            kind,
            state,
            reason,
            message,
            self.now,
            self.generation,
            force_transition=force,
        )

    def _seconds_until(self, when: datetime) -> float:
        return (when - self.now).total_seconds()

    def _child_conflicts(self) -> bool:
        """Objects under the job's child names that the job does not own: never adopted.
        Leftovers of a deleted namesake are waited for (the plan goes on, the executor
        retries); anything else fails the job naming it. True when the job failed."""
        conflicts = self.obs.conflicts
        hard = [c for c in conflicts if not c.stale]
        ns = self.obs.namespace
        if hard:
            text = "; ".join(c.describe(ns) for c in hard)
            self._fail(
                Reason.RESOURCE_CONFLICT,
                f"{text}: the job does not take over objects it does not own; delete "
                "them or give the FineTuneJob another name",
            )
            return True
        if conflicts:
            text = "; ".join(c.describe(ns) for c in conflicts)
            self._set(
                CONDITION_RESOURCE_CONFLICT,
                "True",
                Reason.WAITING_FOR_GARBAGE_COLLECTION,
                f"{text}: waiting for it to be deleted",
            )
            self.plan.requeue(WAIT_FOR_DELETION_SECONDS)
        else:
            remove_condition(self.st, CONDITION_RESOURCE_CONFLICT)
        return False

    def _creation_refused(self) -> bool:
        """The API server refused the job's last pod create: a verdict when retrying cannot
        help (the same pod is refused again), else a condition with the server's message
        while the executor keeps retrying. True when the job failed."""
        refusal = self.obs.refusal
        if refusal is not None and refusal.generation not in (None, self.generation):
            refusal = None  # refused under an older spec: the next create tells
        if refusal is None:
            remove_condition(self.st, CONDITION_POD_CREATION_FAILED)
            return False
        text = (
            f"the API server refused to create pod {refusal.pod} "
            f"({refusal.code} {refusal.reason}): {refusal.message}"
        )
        if refusal.permanent:
            self._fail(
                Reason.POD_CREATION_REFUSED,
                f"{text}; the same pod would be refused again: fix the spec (or the "
                "namespace's policy) and re-create the job",
            )
            return True
        self._set(
            CONDITION_POD_CREATION_FAILED,
            "True",
            Reason.FAILED_CREATE,
            f"{text}; retrying with backoff",
        )
        self.blocked = f"blocked: pod creation refused ({refusal.reason or refusal.code})"
        return False

    # -- terminal ---------------------------------------------------------------------------------
    def _terminal(self) -> None:
        # Whatever still runs after the verdict holds resources for nothing.
        self._delete(p for p in self.owned if not p.terminated)
        succeeded = self.st.phase == "Succeeded"
        if succeeded and get_condition(self.st, CONDITION_PROMOTABLE) is None:
            # Succeeded under an operator without evaluation gates: give the verdict now, or
            # a rollout of its model would wait for one for ever. (Terminal jobs are not
            # parsed, so this reads the raw spec.)
            if (self.obs.raw.get("spec") or {}).get("evaluation"):
                self._set(
                    CONDITION_PROMOTABLE,
                    "False",
                    evaluation.EVALUATION_MISSING,
                    "no evaluation verdict was recorded when the job succeeded",
                )
            else:
                self._set(
                    CONDITION_PROMOTABLE,
                    "True",
                    evaluation.NO_EVALUATION_GATES,
                    "the job has no spec.evaluation",
                )
        for wl in self.workloads:
            if not wl.deleting and not wl.is_finished:
                failed = get_condition(self.st, CONDITION_FAILED)
                message = (
                    "the FineTuneJob succeeded"
                    if succeeded
                    else f"the FineTuneJob failed ({failed.reason if failed else 'Failed'})"
                )
                self.plan.actions.append(FinishWorkload(wl.name, wl.uid, succeeded, message))
        ttl = _run_policy(self.obs).ttl_seconds_after_finished
        done = self.st.completion_time
        if ttl is not None and done is not None:
            expires = done + timedelta(seconds=ttl)
            if self.now >= expires:
                self.plan.actions.append(DeleteJob(self.obs.uid))
            else:
                self.plan.requeue(self._seconds_until(expires))

    def _fail_validation(self, reason: str, message: str, failed: str | None = None) -> None:
        """Validated=False and Failed under one reason: the job cannot pass validation."""
        self._set(CONDITION_VALIDATED, "False", reason, message)
        self._fail(reason, failed or message)

    def _fail(self, reason: str, message: str) -> None:
        self.st.phase = "Failed"
        self.phase_message = message
        self._set(CONDITION_FAILED, "True", reason, message)
        self._set(CONDITION_RUNNING, "False", reason, message)
        if is_true(self.st, CONDITION_RESTARTING):
            self._set(CONDITION_RESTARTING, "False", reason, "the job failed")
        self.st.completion_time = self.st.completion_time or self.now
        self.summary = f"failed: {reason}"
        self.plan.metrics.append(MetricEvent("failure", reason))
        self._delete(p for p in self.owned if not p.terminated)

    def _succeed(self, gang: GangState) -> None:
        job = self.spec_job
        self.st.phase = "Succeeded"
        msg = (
            f"all {gang.size} pods of attempt {self.obs.attempt} completed; "
            f"output at {job.spec.output.uri}"
        )
        self.phase_message = msg
        self._set(CONDITION_SUCCEEDED, "True", Reason.COMPLETED, msg)
        self._set(CONDITION_RUNNING, "False", Reason.COMPLETED, "training finished")
        self.st.completion_time = self.st.completion_time or self.now
        self.st.output_uri = job.spec.output.uri
        progress = self.st.progress or Progress()
        if progress.total_steps:
            progress.step = max(progress.step, progress.total_steps)
        progress.percent = 100
        progress.eta_seconds = 0
        self.st.progress = progress
        self.summary = "done"
        verdict = evaluation.outcome(job, gang.by_rank.get(0), self.now)
        self.st.evaluation = verdict.status
        self._set(
            CONDITION_PROMOTABLE,
            "True" if verdict.promotable else "False",
            verdict.reason,
            verdict.message,
        )
        if verdict.event is not None:
            self.plan.event(*verdict.event)

    # -- warnings and deadlines -------------------------------------------------------------------
    def _warnings(self) -> None:
        assert self.report is not None
        messages = [str(p) for p in self.report.warnings]
        chosen, others = credentials_secret(self.spec_job.spec)
        if others:
            messages.append(
                f"several credential Secrets are referenced; the trainer's AWS_* variables "
                f"come from {chosen} only (not {', '.join(others)})"
            )
        if not messages:
            remove_condition(self.st, CONDITION_CONFIG_WARNING)
            return
        text = "; ".join(messages)
        before = get_condition(self.st, CONDITION_CONFIG_WARNING)
        self._set(CONDITION_CONFIG_WARNING, "True", Reason.NOT_RECOMMENDED, text)
        if before is None or before.message != text[:MAX_MESSAGE]:
            for message in messages:
                self.plan.event("Warning", Reason.CONFIG_WARNING, message)

    def _deadline_exceeded(self) -> bool:
        limit = self.spec_job.spec.run_policy.active_deadline_seconds
        start = self.st.start_time
        if not limit or start is None:
            return False
        deadline = start + timedelta(seconds=limit)
        if self.now >= deadline:
            self._fail(
                Reason.DEADLINE_EXCEEDED,
                f"the job ran longer than activeDeadlineSeconds={limit} (since "
                f"{start.strftime('%Y-%m-%dT%H:%M:%SZ')})",
            )
            return True
        self.plan.requeue(self._seconds_until(deadline))
        return False

    # -- GPU-hours and the budget -----------------------------------------------------------------
    def _account(self) -> None:
        """Advance ``status.gpuHours`` to now (goodput.py says what counts)."""
        spec = self.obs.raw.get("spec") or {}
        resource = (spec.get("resources") or {}).get("gpuResourceName") or "nvidia.com/gpu"
        self.gpu_resource = str(resource)
        self.holds = goodput.holdings(self.owned, self.gpu_resource)
        self.st.gpu_hours = goodput.account(
            self.old.gpu_hours, self.now, self.holds, self._gpu_sample()
        )
        if goodput.gpus_held(self.holds) > 0:
            self.plan.requeue(self._gpu_hours_period)

    @property
    def _gpu_hours_period(self) -> float:
        """How often status.gpuHours alone is written: at the pace of the progress polls."""
        return max(self.cfg.progress_interval_seconds, self.cfg.status_coalesce_seconds)

    def _gpu_sample(self) -> goodput.Sample | None:
        """The latest progress sample as goodput evidence: of the current attempt, read
        after its rank-0 pod was created (not a leftover of a gang suspended before), from a
        trainer past loading (its step is where it really is)."""
        sample = self.obs.progress
        if sample is None or sample.error is not None or sample.attempt != self.obs.attempt:
            return None
        doc = parse_document(sample.document)
        if doc is None or doc.state not in goodput.TRAINING_STATES:
            return None
        rank0 = next((p for p in self.workers if p.attempt == sample.attempt and p.rank == 0), None)
        fetched = (
            sample.fetched_at if sample.fetched_at.tzinfo else sample.fetched_at.replace(tzinfo=UTC)
        )
        fetched = fetched.astimezone(UTC).replace(microsecond=0)
        if rank0 is None or rank0.created is None or not rank0.created <= fetched <= self.now:
            return None
        gang = [
            p
            for p in self.workers
            if p.attempt == sample.attempt and p.created is not None and p.created <= fetched
        ]  # the gang rank 0 belongs to (the pods of a suspended one are gone before it)
        gpus = goodput.gang_gpus(gang, self.gpu_resource)
        return goodput.Sample(rank0.uid, doc.step, fetched, gpus, doc.last_checkpoint_step)

    def _budget_spent(self) -> bool:
        """Suspend the job once ``runPolicy.gpuHourBudget`` is spent (True then); warn when
        90% is; look again when either will be reached at the current rate."""
        budget = self.spec_job.spec.run_policy.gpu_hour_budget
        if budget is None:
            return False
        hours = self.st.gpu_hours
        used = hours.allocated if hours is not None else 0.0
        if used >= budget:
            checkpoint = self.st.last_checkpoint
            resume = (
                f"it resumes from its checkpoint at step {checkpoint.step} ({checkpoint.path})"
                if checkpoint is not None
                else "no checkpoint was reported yet: it resumes from the newest one the "
                "trainer wrote on stopping, if any"
            )
            message = (
                f"GPU-hour budget exhausted: {used:.4g} of {budget:g} GPU-hours used "
                f"(spec.runPolicy.gpuHourBudget); the gang was stopped gracefully (the trainer "
                f"checkpoints on SIGTERM). Raise or remove the budget to resume: {resume}"
            )
            before = get_condition(self.old, CONDITION_SUSPENDED)
            self._suspend(Reason.GPU_HOUR_BUDGET_EXHAUSTED, message)
            progress = self.st.progress
            self.summary = "budget exhausted" + (
                f" at {progress.step}/{progress.total_steps}"
                if progress and progress.total_steps
                else ""
            )
            if (
                before is None
                or before.status != "True"
                or before.reason != Reason.GPU_HOUR_BUDGET_EXHAUSTED
            ):
                self.plan.event("Warning", Reason.GPU_HOUR_BUDGET_EXHAUSTED, message)
                self.gpu_hours_due = True
            return True
        ratio = goodput.BUDGET_WARNING_RATIO
        before_used = self.old.gpu_hours.allocated if self.old.gpu_hours is not None else 0.0
        if before_used < ratio * budget <= used:
            self.plan.event(
                "Warning",
                Reason.GPU_HOUR_BUDGET_NEARLY_SPENT,
                f"{used:.4g} of {budget:g} GPU-hours used ({100 * used / budget:.0f}%, "
                "spec.runPolicy.gpuHourBudget): the job is suspended when it is spent",
            )
            self.gpu_hours_due = True  # the crossing is recorded: warned once
        for share in (ratio, 1.0):
            wait = goodput.seconds_until_spent(hours, budget, self.holds, share)
            if wait is not None:
                self.plan.requeue(wait)
        return False

    # -- suspension -------------------------------------------------------------------------------
    def _suspend(self, reason: Reason = Reason.SUSPENDED, message: str | None = None) -> None:
        # Every gang pod goes (their names are reused on resume) -- gracefully: the trainer
        # checkpoints on SIGTERM; finished validation pods hold nothing and keep their logs.
        self._delete([*self.workers, *(p for p in self.validators if not p.terminated)])
        for wl in self.workloads:  # a suspended job holds no quota either
            if not wl.deleting:
                self.plan.actions.append(DeleteWorkload(wl.name, wl.uid))
        self.st.phase = "Suspended"
        self.phase_message = (
            message or "runPolicy.suspend is true: pods removed, status and checkpoints kept"
        )
        self._set(CONDITION_SUSPENDED, "True", reason, self.phase_message)
        self._set(CONDITION_RUNNING, "False", reason, "the job is suspended")
        if get_condition(self.st, CONDITION_ADMITTED) is not None:
            self._set(CONDITION_ADMITTED, "False", reason, "the gang was released")
        progress = self.st.progress
        self.summary = "suspended" + (
            f" at {progress.step}/{progress.total_steps}"
            if progress and progress.total_steps
            else ""
        )
        if any(not p.terminated for p in self.owned):
            self.plan.requeue(WAIT_FOR_DELETION_SECONDS)

    def _resume_if_suspended(self) -> None:
        suspended = get_condition(self.st, CONDITION_SUSPENDED)
        if suspended is None or suspended.status != "True":
            return
        message = "runPolicy.suspend is false"
        if suspended.reason == Reason.GPU_HOUR_BUDGET_EXHAUSTED:
            budget = self.spec_job.spec.run_policy.gpu_hour_budget
            used = self.st.gpu_hours.allocated if self.st.gpu_hours is not None else 0.0
            message = (
                f"spec.runPolicy.gpuHourBudget raised to {budget:g} GPU-hours ({used:.4g} used)"
                if budget is not None
                else "spec.runPolicy.gpuHourBudget removed"
            )
        self._set(CONDITION_SUSPENDED, "False", Reason.RESUMED, message)
        self.plan.event("Normal", Reason.RESUMED, f"the job was resumed: {message}")
        self.st.start_time = None  # as batch/v1 Job: the deadline clock restarts on resume
        if self.workers and not is_true(self.st, CONDITION_RESTARTING):
            # Pods of the suspended gang may still be terminating: replace them first.
            self._set(
                CONDITION_RESTARTING,
                "True",
                Reason.RESUMED,
                "waiting for the pods of the suspended gang to terminate",
            )

    # -- team defaults (profiles.py) --------------------------------------------------------------
    def _profiles_resolved(self) -> bool:
        """Record the profiles the job was resolved with (freezing them); False while
        ``spec.profile`` names a profile that does not exist (it waits, then fails)."""
        res = self.obs.profiles
        if res is None or not res.fresh:
            return True
        if res.missing is None:
            self.st.profiles = [AppliedProfile.model_validate(a) for a in res.applied]
            self.st.profile_defaults = dict(res.defaults) or None
            return True
        created = parse_time((self.obs.raw.get("metadata") or {}).get("creationTimestamp"))
        deadline = (created or self.now) + timedelta(seconds=PROFILE_WAIT_SECONDS)
        if self.now >= deadline:
            self._fail_validation(Reason.PROFILE_NOT_FOUND, res.missing)
            return False
        self._set(
            CONDITION_VALIDATED,
            "Unknown",
            Reason.PROFILE_NOT_FOUND,
            f"{res.missing}; waiting up to {PROFILE_WAIT_SECONDS:g}s for it",
        )
        self.summary = "waiting for its profile"
        self.plan.requeue(min(PROFILE_RETRY_SECONDS, self._seconds_until(deadline)))
        return False

    # -- validation -------------------------------------------------------------------------------
    def _validate(self) -> bool:
        """Drive the validation pod; True once validation passed (in this very call, too)."""
        job = self.spec_job
        runs = sorted(self.validators, key=lambda p: p.validation_run or 0)
        latest = runs[-1] if runs else None
        if latest is not None and (latest.validation_run or 0) > (self.st.validation_runs or 0):
            self.st.validation_runs = latest.validation_run
        self.st.phase = "Validating"
        self.summary = "validating"
        if latest is not None and latest.phase == "Succeeded":
            raw = latest.exit.message if latest.exit and latest.exit.message else None
            detail = without_plan(raw) if raw else None
            self._set(
                CONDITION_VALIDATED,
                "True",
                Reason.VALIDATION_PASSED,
                detail or f"model, dataset and config checked by pod {latest.name}",
            )
            self._record_plan(raw)
            # The Completed pod stays (it holds nothing; `kubectl logs` shows what was
            # checked) until the job goes; the Queued Event reports the verdict.
            self._delete(p for p in runs if p is not latest)
            self.summary = None
            self.validated_now = True
            return True
        failure: Failure | None = None
        if latest is not None and latest.phase != "Succeeded":
            failure = classify_pod(
                latest, self.obs.nodes, self.now, self.cfg.node_lost_grace_seconds
            )
        if latest is None or (failure is not None and failure.infrastructure):
            if latest is not None and latest.deleting and not latest.terminated:
                self.plan.requeue(WAIT_FOR_DELETION_SECONDS)
                return False  # let it go before re-running
            # The status keeps the count of runs whose pods were seen: a pod that vanished
            # (deleted by someone, pod GC) leaves no label to count from, while a create
            # that never happened (refused, a crash) must not use up a rerun.
            run = max(latest.validation_run or 0 if latest else 0, self.st.validation_runs or 0)
            run += 1
            if run > 1 + self.cfg.validation_reruns:
                if failure is None:
                    failure = Failure(
                        True,
                        Reason.POD_LOST,
                        f"validation pod of run {run - 1} disappeared before it finished",
                    )
                self._fail_validation(
                    failure.reason,
                    failure.message,
                    f"validation could not run ({run - 1} tries): {failure.message}",
                )
                return False
            if latest is not None:
                self._delete([latest])
            if self._ensure_config(max(1, self.st.attempts)) is None:
                return False
            lost_on = [latest.node_name] if latest is not None and latest.node_name else []
            pod = render_validation_pod(job, run, self.cfg, avoid_nodes=lost_on)
            self.plan.actions.append(CreatePod(pod))
            message = f"checking model, dataset and config in pod {pod['metadata']['name']}"
            self._set(CONDITION_VALIDATED, "Unknown", Reason.VALIDATING, message)
            self.phase_message = message
            self.plan.requeue(self.cfg.validation_timeout_seconds)
            return False
        assert latest is not None
        if failure is not None:
            code = latest.exit.exit_code if latest.exit else None
            reason = exit_reason(code) if code else failure.reason
            detail = latest.exit.message if latest.exit and latest.exit.message else failure.message
            message = (
                f"validation pod {latest.name} exited with code {code} ({reason}): {detail}"
                if code
                else detail
            )
            self._fail_validation(reason, message)
            return False
        # Still pending or running.
        started = latest.created or self.now
        deadline = started + timedelta(seconds=self.cfg.validation_timeout_seconds + 30)
        problem = startup_problem(latest)
        if problem is not None:
            # A missing Secret/ConfigMap key, an image that cannot be pulled: name it now,
            # and give up after startup_timeout_seconds rather than the validation timeout.
            deadline = min(deadline, started + timedelta(seconds=self.cfg.startup_timeout_seconds))
        if self.now >= deadline:
            if problem is not None:
                self._fail_validation(
                    problem.reason,
                    f"validation could not start within "
                    f"{(deadline - started).total_seconds():g}s: {problem.message}",
                )
            else:
                self._fail_validation(
                    Reason.VALIDATION_TIMEOUT,
                    f"validation pod {latest.name} did not finish within "
                    f"{self.cfg.validation_timeout_seconds}s",
                )
            return False
        scheduled = latest.scheduled
        if problem is not None:
            before = get_condition(self.old, CONDITION_VALIDATED)
            message = f"validation {problem.message}"
            self._set(CONDITION_VALIDATED, "Unknown", problem.reason, message)
            if before is None or before.reason != problem.reason:
                self.plan.event("Warning", problem.reason, message)
            self.summary = f"validating: {problem.reason}"
        elif not latest.bound and scheduled is not None and scheduled.message:
            # Say why (e.g. a PVC that does not exist) instead of just "validating".
            self._set(
                CONDITION_VALIDATED,
                "Unknown",
                Reason.VALIDATION_PENDING,
                f"validation pod {latest.name} cannot start: {scheduled.message}",
            )
            self.summary = "validating: pod pending"
        else:
            self._set(
                CONDITION_VALIDATED,
                "Unknown",
                Reason.VALIDATING,
                f"checking model, dataset and config in pod {latest.name}",
            )
        self.plan.requeue(self._seconds_until(deadline))
        lost_at = node_loss_deadline(latest, self.obs.nodes, self.cfg.node_lost_grace_seconds)
        if lost_at is not None:
            self.plan.requeue(self._seconds_until(lost_at))
        return False

    def _record_plan(self, message: str | None) -> None:
        """status.plan and FitsGPUMemory from the validation pod's estimate (a warning
        when it does not fit, never a failure: it is an estimate)."""
        result = resource_plan.outcome(message)
        if result is None:
            return
        self.st.plan = result.status
        before = get_condition(self.st, CONDITION_FITS_GPU_MEMORY)
        self._set(CONDITION_FITS_GPU_MEMORY, result.condition, result.reason, result.message)
        if result.event is not None and (before is None or before.reason != result.reason):
            self.plan.event(*result.event)

    # -- the gang ---------------------------------------------------------------------------------
    def _ensure_config(self, attempt: int) -> ResolvedJob | None:
        try:
            resolved = trainer_document(resolve(self.spec_job, attempt=attempt))
        except (ResolutionError, ValidationError) as exc:
            self._fail(Reason.INVALID_CONFIG, f"the spec does not resolve: {exc}")
            return None
        self.plan.actions.append(ApplyConfigMap(render_config_map(self.spec_job, resolved)))
        return resolved

    def _gang(self) -> None:
        job = self.spec_job
        size = job.spec.resources.nodes
        attempt = self.obs.attempt
        if self.st.attempts != attempt and self.st.attempts:
            self.st.attempts = attempt  # pods of a newer attempt exist: status catches up
        if not self._queue_admits(attempt):
            return
        restarting = get_condition(self.st, CONDITION_RESTARTING)
        if restarting is not None and restarting.status == "True":
            self._replace_gang(attempt, restarting.reason, restarting.last_transition_time)
            return
        stale = [p for p in self.workers if p.attempt != attempt]
        self._delete(stale)
        current = [p for p in self.workers if p.attempt == attempt]
        if not current:
            if self._blocking(attempt):
                self.st.phase = "Queued"
                self.summary = "waiting for the previous gang to stop"
                self.plan.requeue(WAIT_FOR_DELETION_SECONDS)
                return
            self._create_gang(attempt)
            return
        self._follow_gang(attempt, GangState.of(current, size))

    # -- Kueue (queueing.py) ----------------------------------------------------------------------
    def _queue_admits(self, attempt: int) -> bool:
        """Behind a Kueue queue (``runPolicy.queueName``): True once the job's Workload is
        admitted, so the gang may exist; until then the job is Queued with no pod at all.

        An evicted Workload (preempted by a higher-priority job, reclaimed by a cohort,
        deactivated) stops the gang gracefully -- the trainer checkpoints on SIGTERM -- and,
        once no pod is left, its admission is cleared so Kueue queues it again. It is not a
        failure: it uses no retry, and the gang comes back as the same attempt, resuming
        from its newest checkpoint. A retry after a failure keeps the quota (like a pod
        restart in a Kueue-managed Job)."""
        job = self.spec_job
        queue = job.spec.run_policy.queue_name
        if not queue:
            return True
        if not self.obs.kueue:
            self._delete(self.workers)
            self._wait_in_queue(
                Reason.KUEUE_UNAVAILABLE,
                f"runPolicy.queueName is {queue!r} but Kueue's Workload API "
                f"({queueing.KUEUE_API_VERSION}) is not served here (or the operator was "
                "started without it): install Kueue and restart the operator, or remove "
                "runPolicy.queueName",
                f"queued in {queue}: Kueue not installed",
            )
            self.plan.requeue(self.cfg.capacity_recheck_seconds)
            return False
        body = queueing.render_workload(job, render_worker_pod(job, attempt, 0, self.cfg))
        name = str(body["metadata"]["name"])
        for wl in self.workloads:  # an older shape (resources edited while suspended)
            if wl.name != name and not wl.deleting:
                self.plan.actions.append(DeleteWorkload(wl.name, wl.uid))
        current = next((w for w in self.workloads if w.name == name), None)
        if current is None or current.deleting:
            if current is None:
                self.plan.actions.append(EnsureWorkload(body))
            self._delete(self.workers)  # pods of another Workload's admission
            self._wait_in_queue(
                Reason.WAITING_FOR_QUEUE,
                f"waiting for Kueue LocalQueue {queue} to admit Workload {name} "
                f"({job.spec.resources.nodes} pods, {self.st.gpus} GPUs)",
                f"queued in {queue}",
            )
            return False
        if current.is_evicted:
            self._evicted(attempt, current)
            return False
        if not current.is_admitted:
            # Admission withdrawn without an eviction (Kueue lost the ClusterQueue): stop.
            self._delete(self.workers)
            reason = current.pending_reason()
            self._wait_in_queue(
                Reason.WAITING_FOR_QUEUE,
                f"Workload {name} is pending in Kueue LocalQueue {queue}: {reason}",
                f"queued in {queue}: {reason}",
            )
            return False
        placement = current.placement(self.obs.flavors)
        if placement is None:
            flavors = ", ".join(sorted({f for _, f in current.flavors}))
            self._wait_in_queue(
                Reason.WAITING_FOR_FLAVOR,
                f"Workload {name} was admitted on ResourceFlavor {flavors}, not known to the "
                "operator yet",
                f"admitted in {queue}: reading flavor {flavors}",
            )
            self.plan.requeue(WAIT_FOR_DELETION_SECONDS)
            return False
        self.placement = placement
        return True

    def _wait_in_queue(self, reason: Reason, message: str, summary: str) -> None:
        self.st.phase = "Queued"
        self.summary = clip_summary(summary)
        before = get_condition(self.old, CONDITION_ADMITTED)
        self._set(
            CONDITION_ADMITTED,
            "Unknown" if reason != Reason.KUEUE_UNAVAILABLE else "False",
            reason,
            message,
        )
        self._set(CONDITION_RUNNING, "False", reason, "waiting for admission by Kueue")
        if reason == Reason.KUEUE_UNAVAILABLE and (before is None or before.reason != reason):
            self.plan.event("Warning", reason, message)

    def _evicted(self, attempt: int, wl: queueing.WorkloadView) -> None:
        assert wl.evicted is not None
        kueue_reason = wl.evicted.reason or "Evicted"
        reason = Reason.PREEMPTED if kueue_reason == "Preempted" else Reason.EVICTED
        checkpoint = self.st.last_checkpoint
        resume = (
            f"resumes from checkpoint step {checkpoint.step}"
            if checkpoint
            else "no checkpoint yet: it starts from the beginning"
        )
        message = (
            f"Kueue evicted Workload {wl.name} ({kueue_reason}): {wl.evicted.message or ''}; "
            f"the gang was stopped (the trainer checkpoints on SIGTERM) and the job waits in "
            f"queue {self.spec_job.spec.run_policy.queue_name} again; attempt {attempt} {resume}"
        )
        self.st.phase = "Queued"
        self.phase_message = message
        before = get_condition(self.old, CONDITION_ADMITTED)
        self._set(CONDITION_ADMITTED, "False", reason, message)
        self._set(CONDITION_RUNNING, "False", reason, "the gang was evicted by Kueue")
        if before is None or before.reason != reason or before.status != "False":
            self.plan.event("Warning", reason, message)
            if any(p.live for p in self.workers):
                self.plan.metrics.append(MetricEvent("restart", reason))
        self._delete(self.workers)
        self.summary = clip_summary(
            f"{reason.lower()}: requeued in {self.spec_job.spec.run_policy.queue_name}"
        )
        if self._blocking(attempt):
            self.plan.requeue(WAIT_FOR_DELETION_SECONDS)
            return
        if wl.has_quota:
            self.plan.actions.append(
                ReleaseWorkload(
                    wl.name,
                    wl.uid,
                    kueue_reason,
                    wl.evicted.message or kueue_reason,
                    requeue=kueue_reason in queueing.REQUEUE_REASONS,
                )
            )

    def _replace_gang(self, attempt: int, reason: str, anchor: datetime) -> None:
        """The gang is being replaced: every existing worker pod belongs to the old one."""
        self.st.phase = "Queued"
        self._delete(self.workers)
        blocking = self._blocking(attempt)
        if blocking:
            self.summary = f"restarting: stopping {len(blocking)} pods"
            self.plan.requeue(WAIT_FOR_DELETION_SECONDS)
            return
        if reason == Reason.GANG_UNSCHEDULABLE:
            delay = self.cfg.unschedulable_retry_seconds
        elif reason in (Reason.RESUMED, Reason.RESTART_REQUESTED):
            delay = 0.0
        else:
            delay = backoff_seconds(
                attempt - 1, self.cfg.backoff_base_seconds, self.cfg.backoff_max_seconds
            )
        ready = anchor + timedelta(seconds=delay)
        if self.now < ready:
            wait = self._seconds_until(ready)
            self.summary = f"attempt {attempt} starts in {int(wait + 0.999)}s"
            self.plan.requeue(wait)
            return
        self._create_gang(attempt)

    def _create_gang(self, attempt: int) -> None:
        job = self.spec_job
        res = job.spec.resources
        resolved = self._ensure_config(attempt)
        if resolved is None:
            return
        self.plan.actions.append(EnsureService(render_service(job, self.cfg)))
        if self.cfg.network_policy:
            self.plan.actions.append(EnsureNetworkPolicy(render_network_policy(job, self.cfg)))
        config_hash = resolved.config_hash()
        self._complete_gang(attempt, range(res.nodes), [], config_hash)
        self.created_gang = True
        gpus = res.nodes * res.gpus_per_node
        self.st.attempts = attempt
        self.st.start_time = self.st.start_time or self.now
        self.st.lineage = (self.st.lineage or Lineage()).model_copy(
            update={"resolved_config_hash": config_hash, "image": image_of(job.spec, self.cfg)}
        )
        self.st.phase = "Queued"
        message = f"created {res.nodes} pods ({gpus} GPUs) for attempt {attempt}"
        if self.validated_now:
            message = f"validation passed; {message}"
        checkpoint = self.st.last_checkpoint
        if attempt > 1 and checkpoint is not None:
            message += f", resuming from checkpoint step {checkpoint.step} ({checkpoint.path})"
        self.phase_message = message
        self._set(
            CONDITION_ADMITTED,
            "Unknown",
            Reason.GANG_CREATED,
            message + "; waiting for the whole gang to be placed",
            force=True,
        )
        self._set(
            CONDITION_RUNNING, "False", Reason.GANG_PENDING, "waiting for the gang to be placed"
        )
        if get_condition(self.st, CONDITION_RESTARTING) is not None:
            self._set(CONDITION_RESTARTING, "False", Reason.GANG_CREATED, message)
        if self.old.phase == "Queued":  # otherwise the phase-transition Event says it
            self.plan.event("Normal", Reason.GANG_CREATED, message)
        self.summary = f"queued: 0/{res.nodes} placed"
        self.plan.requeue(job.spec.run_policy.scheduling_timeout_seconds)
        if self.capacity_wait is not None:
            self._report_capacity_wait(self.capacity_wait)

    def _complete_gang(
        self,
        attempt: int,
        ranks: Sequence[int],
        gated: Sequence[PodView],
        config_hash: str | None,
    ) -> None:
        """Create the pods of ``ranks``, then lift the gang gate of ``gated`` and of them.

        Gates come off once ALL creates succeeded (AlreadyExists counts): the executor runs
        actions in order and stops at the first failure, so after a crash or an error the
        pods that exist stay gated until the next reconcile completes the gang.
        """
        job = self.spec_job
        for rank in ranks:
            body = render_worker_pod(job, attempt, rank, self.cfg, config_hash=config_hash)
            if self.placement is not None:
                body = self.placement.apply(body)
            self.plan.actions.append(CreatePod(body))
        names = [naming.pod_name(str(job.metadata.name), attempt, rank) for rank in ranks]
        verdict = self._admission(attempt)
        if verdict is not None and not verdict.fits:
            self.capacity_wait = verdict  # all stay gated: part of a gang must not bind
            return
        for name in [*(p.name for p in gated), *names]:
            self.plan.actions.append(UngatePod(name))

    def _admission(self, attempt: int) -> Verdict | None:
        """Whether the whole gang has room now (admission.py); None when Kueue admits it or
        the nodes are not known (the gates come off, the scheduler decides)."""
        job = self.spec_job
        nodes, capacity = self.obs.nodes, self.obs.capacity
        if job.spec.run_policy.queue_name or nodes is None or capacity is None:
            return None
        pod = render_worker_pod(job, attempt, 0, self.cfg)
        verdict = admit(pod, job.spec.resources.nodes, nodes, capacity)
        if verdict.ever == 0:  # not even one pod: say which node falls short and how
            never = never_fits(pod, nodes)
            if never is not None:
                verdict = dataclasses.replace(
                    verdict, why=f"no node can ever run its pods: {never}"
                )
        return verdict

    def _report_capacity_wait(self, verdict: Verdict) -> bool:
        """Admitted=Unknown saying why the gang is held back; True when it can never fit."""
        never = verdict.ever < verdict.size
        reason = Reason.GANG_NEVER_FITS if never else Reason.WAITING_FOR_CAPACITY
        if verdict.ever == 0 and verdict.why:
            reason = Reason.NO_NODE_FITS
        message = verdict.describe()
        before = get_condition(self.old, CONDITION_ADMITTED)
        self._set(CONDITION_ADMITTED, "Unknown", reason, message)
        self._set(CONDITION_RUNNING, "False", reason, "the gang is not released yet")
        if before is None or before.reason != reason:
            self.plan.event("Warning" if never else "Normal", reason, message)
        if never:
            self.summary = "unplaceable: gang larger than the cluster"
        else:
            self.summary = f"queued: waiting for room ({verdict.room}/{verdict.size} fit)"
            self.plan.requeue(self.cfg.capacity_recheck_seconds)
        return never

    def _restart(self, attempt: int, failure: Failure) -> None:
        policy = self.spec_job.spec.run_policy
        restarts = attempt - 1
        if restarts >= policy.backoff_limit:
            self._fail(
                Reason.BACKOFF_LIMIT_EXCEEDED,
                f"attempt {attempt} failed ({failure.reason}): {failure.message}; "
                f"backoffLimit {policy.backoff_limit} reached",
            )
            return
        nxt = attempt + 1
        delay = backoff_seconds(
            nxt - 1, self.cfg.backoff_base_seconds, self.cfg.backoff_max_seconds
        )
        checkpoint = self.st.last_checkpoint
        resume = (
            f"resuming from checkpoint step {checkpoint.step} ({checkpoint.path})"
            if checkpoint
            else "no checkpoint yet: starting from the beginning"
        )
        message = (
            f"attempt {attempt} failed ({failure.reason}): {failure.message}; "
            f"attempt {nxt} of {policy.backoff_limit + 1} starts in {delay:g}s, {resume}"
        )
        self.st.attempts = nxt
        self.st.phase = "Queued"
        self.phase_message = message
        self._set(CONDITION_RESTARTING, "True", failure.reason, message)
        self._set(CONDITION_RUNNING, "False", failure.reason, failure.message)
        self._set(CONDITION_ADMITTED, "False", Reason.GANG_RELEASED, "the failed gang was released")
        self.plan.event("Warning", Reason.RESTARTING, message)
        self.plan.metrics.append(MetricEvent("restart", failure.reason))
        self._delete(self.workers)
        self.summary = f"restarting (attempt {nxt})"
        self.plan.requeue(delay)

    def _updates_pending(self, attempt: int, gang: GangState) -> None:
        """Say which spec edits the gang does not see: its pods keep the env, image and
        trainer configuration they were created with."""
        created = next((dict(p.spec_sections) for p in gang.pods if p.spec_sections), None)
        if created is None:  # pods of an operator that did not record them
            return
        now = spec_sections(self.spec_job)
        changed = sorted(k for k, v in now.items() if created.get(k) not in (None, v))
        if not changed:
            remove_condition(self.st, CONDITION_UPDATES_PENDING)
            return
        fields = ", ".join(f"spec.{k}" for k in changed)
        self._set(
            CONDITION_UPDATES_PENDING,
            "True",
            Reason.APPLIES_TO_NEXT_ATTEMPT,
            f"{fields} changed after attempt {attempt} was created: the running pods keep "
            "the old values until the next attempt (after a retryable failure), or apply "
            "them now by suspending and resuming the job (spec.runPolicy.suspend: true, "
            "then false; it resumes from its latest checkpoint)",
        )

    def _restart_requested(self, gang: GangState) -> bool:
        """A new ``kubetune.io/restart`` annotation (Argo CD's restart action, or by hand):
        replace the gang, same attempt number, resuming from the newest checkpoint. Like a
        suspend and resume it is not a failure: it does not count against backoffLimit."""
        requested = self.spec_job.metadata.annotations.get(naming.ANNOTATION_RESTART)
        if not requested or not gang.pods or any(p.restart_token == requested for p in gang.pods):
            return False
        checkpoint = self.st.last_checkpoint
        resume = (
            f"resuming from checkpoint step {checkpoint.step} ({checkpoint.path})"
            if checkpoint
            else "no checkpoint yet: starting from the beginning"
        )
        message = (
            f"restart requested (metadata.annotations[{naming.ANNOTATION_RESTART}]="
            f"{requested[:64]}): replacing the gang, {resume}"
        )
        self.st.phase = "Queued"
        self.phase_message = message
        self._set(CONDITION_RESTARTING, "True", Reason.RESTART_REQUESTED, message)
        self._set(CONDITION_RUNNING, "False", Reason.RESTART_REQUESTED, message)
        self._set(CONDITION_ADMITTED, "False", Reason.GANG_RELEASED, "the gang was released")
        self.plan.event("Normal", Reason.RESTART_REQUESTED, message)
        self.plan.metrics.append(MetricEvent("restart", Reason.RESTART_REQUESTED))
        self._delete(self.workers)
        self.summary = "restarting (requested)"
        self.plan.requeue(WAIT_FOR_DELETION_SECONDS)
        return True

    def _follow_gang(self, attempt: int, gang: GangState) -> None:
        job = self.spec_job
        size = gang.size
        if self._restart_requested(gang):
            return
        self._updates_pending(attempt, gang)
        self._delete(gang.extra)
        self.st.phase = "Queued"
        failures = [
            f
            for p in gang.pods
            if p.rank is not None and p.rank < size
            if (f := classify_pod(p, self.obs.nodes, self.now, self.cfg.node_lost_grace_seconds))
        ]
        missing = gang.missing
        if missing and gang.ever_released:
            for rank in missing:
                failures.append(
                    Failure(
                        True,
                        Reason.POD_LOST,
                        f"pod {naming.pod_name(job.metadata.name or '', attempt, rank)} "
                        f"(rank {rank}) disappeared",
                        rank=rank,
                    )
                )
        cause = root_cause(failures)
        if cause is not None:
            if cause.retryable:
                self._restart(attempt, cause)
            else:
                self._fail(cause.reason, cause.message)
            return
        if missing or gang.gated:
            # Missing pods: crashed between creating them; the gang is still gated.
            resolved_hash = self.st.lineage.resolved_config_hash if self.st.lineage else None
            self._complete_gang(attempt, missing, gang.gated, resolved_hash)
            if missing:
                self.summary = f"queued: 0/{size} placed"
                return
        if gang.succeeded == size:
            self._succeed(gang)
            return
        for pod in gang.pods:
            lost_at = node_loss_deadline(pod, self.obs.nodes, self.cfg.node_lost_grace_seconds)
            if lost_at is not None:
                self.plan.requeue(self._seconds_until(lost_at))
        if gang.bound < size:
            self._placement(attempt, gang)
            return
        nodes = sorted({p.node_name for p in gang.pods if p.node_name})
        self._set(
            CONDITION_ADMITTED,
            "True",
            Reason.GANG_SCHEDULED,
            f"all {size} pods placed on {', '.join(nodes)}",
        )
        if gang.running + gang.succeeded < size:
            self._starting(attempt, gang)
            return
        self._running(attempt, gang)

    def _starting(self, attempt: int, gang: GangState) -> None:
        """The whole gang is placed (it holds its GPUs) but not all containers run yet.

        A container that cannot start (image pull error, missing Secret/ConfigMap key) is
        reported at once with the kubelet's reason and message; whatever the cause (volumes
        that never mount included), a gang not running ``startup_timeout_seconds`` after it
        was placed is released as a failed attempt, so it never holds GPUs indefinitely.
        """
        size = gang.size
        problems = [f for p in gang.pods if (f := startup_problem(p)) is not None]
        admitted = get_condition(self.st, CONDITION_ADMITTED)
        placed = admitted.last_transition_time if admitted is not None else self.now
        timeout = self.cfg.startup_timeout_seconds
        deadline = placed + timedelta(seconds=timeout)
        waiting = gang.waiting_reasons()
        detail = "; ".join(waiting) if waiting else "containers starting"
        if self.now >= deadline:
            cause = problems[0] if problems else None
            message = (
                f"{size - gang.running - gang.succeeded} of {size} pods did not start within "
                f"startup_timeout_seconds={timeout:g} of being placed: "
                + (cause.message if cause else detail)
            )
            reason = cause.reason if cause else Reason.STARTUP_TIMEOUT
            self._restart(attempt, Failure(True, reason, message))
            return
        until = deadline.strftime("%Y-%m-%dT%H:%M:%SZ")
        if problems:
            cause = problems[0]
            before = get_condition(self.old, CONDITION_RUNNING)
            message = f"{cause.message}; the gang is released at {until} unless it starts"
            self._set(CONDITION_RUNNING, "False", cause.reason, message)
            if before is None or before.reason != cause.reason:
                self.plan.event("Warning", cause.reason, message)
            self.summary = f"starting: {cause.reason}"
        else:
            self._set(CONDITION_RUNNING, "False", Reason.CONTAINERS_STARTING, detail)
            self.summary = f"starting: {gang.running}/{size} running"
        self.plan.requeue(self._seconds_until(deadline))

    def _placement(self, attempt: int, gang: GangState) -> None:
        job = self.spec_job
        size = gang.size
        scheduler = gang.scheduler_message()
        foreign = gang.foreign_gates
        if gang.gated or foreign:
            queue = job.spec.run_policy.queue_name
            if foreign:
                reason = Reason.WAITING_FOR_QUEUE
                message = (
                    f"waiting for admission by Kueue queue {queue}"
                    if queue
                    else f"waiting for scheduling gates {', '.join(sorted(foreign))}"
                )
                self.summary = clip_summary(f"queued in {queue}" if queue else "queued: gated")
            elif self.capacity_wait is not None:
                if self._report_capacity_wait(self.capacity_wait):
                    why = self._not_placed(gang, self.capacity_wait.describe())
                    self._release_if_overdue(gang, self._placement_deadline(gang), why)
                return
            else:
                reason, message = Reason.GANG_PENDING, "releasing the gang to the scheduler"
                self.summary = f"queued: 0/{size} placed"
            self._set(CONDITION_ADMITTED, "Unknown", reason, message)
            return
        deadline = self._placement_deadline(gang)
        timeout = job.spec.run_policy.scheduling_timeout_seconds
        placed = f"{gang.bound}/{size} pods placed"
        partial_deadline = None
        partial = self._partial_since(gang)
        if partial is not None:
            # Part of the gang is bound (holding GPUs) while the scheduler cannot place the
            # rest: room taken by what the operator cannot see. Release it soon.
            early = partial + timedelta(seconds=self.cfg.partial_gang_grace_seconds)
            if early < deadline:
                deadline = partial_deadline = early
        # A pod no node could hold even when empty is not waiting for room: say so at once.
        # (The gang is still released and retried as below: nodes may be added.)
        unplaced = next((p for p in gang.pods if not p.bound), None)
        never = None
        if unplaced is not None and unplaced.rank is not None:
            body = render_worker_pod(job, attempt, unplaced.rank, self.cfg)
            never = never_fits(body, self.obs.nodes)
        if never is not None:
            scheduler = f"no node can ever run pod {unplaced.name if unplaced else ''}: {never}"
        if partial_deadline is not None:
            why = (
                f"only part of the gang could be placed ({placed}) for "
                f"partial_gang_grace_seconds={self.cfg.partial_gang_grace_seconds:g}, holding "
                "GPUs it cannot use" + (f"; scheduler: {scheduler}" if scheduler else "")
            )
        else:
            why = self._not_placed(gang, scheduler)
        if self._release_if_overdue(gang, deadline, why):
            return
        if never is not None:
            message = (
                f"{scheduler}; {placed}. Waiting in case nodes are added: the gang is released "
                f"after schedulingTimeoutSeconds={timeout} and retried"
            )
            before = get_condition(self.old, CONDITION_ADMITTED)
            self._set(CONDITION_ADMITTED, "Unknown", Reason.NO_NODE_FITS, message)
            self._set(CONDITION_RUNNING, "False", Reason.NO_NODE_FITS, "no node fits the pods")
            if before is None or before.reason != Reason.NO_NODE_FITS:
                self.plan.event("Warning", Reason.NO_NODE_FITS, message)
            self.summary = "unplaceable: no node fits"
            self.plan.requeue(self._seconds_until(deadline))
            return
        message = placed + (f"; scheduler: {scheduler}" if scheduler else "")
        self._set(CONDITION_ADMITTED, "Unknown", Reason.GANG_PENDING, message)
        self._set(
            CONDITION_RUNNING, "False", Reason.GANG_PENDING, "waiting for the gang to be placed"
        )
        self.summary = f"queued: {placed.replace(' pods', '')}"
        self.plan.requeue(self._seconds_until(deadline))

    def _placement_deadline(self, gang: GangState) -> datetime:
        """schedulingTimeoutSeconds after the gang was created (Admitted turned Unknown
        then); behind a queue, after the queue released it."""
        job = self.spec_job
        admitted = get_condition(self.st, CONDITION_ADMITTED)
        created = [p.created for p in gang.pods if p.created]
        anchor = max(created) if created else self.now
        if admitted is not None and admitted.status == "Unknown":
            anchor = max(anchor, admitted.last_transition_time)
        if job.spec.run_policy.queue_name:
            anchor = max(anchor, self.obs.ungated_since or self.now)
        return anchor + timedelta(seconds=job.spec.run_policy.scheduling_timeout_seconds)

    def _partial_since(self, gang: GangState) -> datetime | None:
        """Since when part of the gang is bound while the scheduler reports another of its
        pods unschedulable; None unless both hold."""
        if not 0 < gang.bound < gang.size:
            return None
        since = [
            p.scheduled.last_transition_time or self.now
            for p in gang.pods
            if not p.bound
            and p.scheduled is not None
            and p.scheduled.status == "False"
            and p.scheduled.reason == "Unschedulable"
        ]
        return min(since) if since else None

    def _not_placed(self, gang: GangState, detail: str | None) -> str:
        timeout = self.spec_job.spec.run_policy.scheduling_timeout_seconds
        return (
            f"the gang of {gang.size} pods ({self.st.gpus} GPUs) could not be placed within "
            f"schedulingTimeoutSeconds={timeout} ({gang.bound}/{gang.size} pods placed)"
            + (f": {detail}" if detail else "")
        )

    def _release_if_overdue(self, gang: GangState, deadline: datetime, why: str) -> bool:
        """Release (delete) a gang not placed by ``deadline``, saying ``why``; it is
        re-created after ``unschedulable_retry_seconds`` without counting against
        backoffLimit."""
        if self.now < deadline:
            self.plan.requeue(self._seconds_until(deadline))
            return False
        message = f"{why}; released, retrying in {self.cfg.unschedulable_retry_seconds:g}s"
        self.phase_message = message
        self._set(CONDITION_ADMITTED, "False", Reason.GANG_UNSCHEDULABLE, message)
        self._set(CONDITION_RESTARTING, "True", Reason.GANG_UNSCHEDULABLE, message)
        self._set(
            CONDITION_RUNNING,
            "False",
            Reason.GANG_UNSCHEDULABLE,
            "the gang could not be placed",
        )
        self.plan.event("Warning", Reason.GANG_UNSCHEDULABLE, message)
        self._delete(self.workers)
        self.summary = "unschedulable: gang released"
        self.plan.requeue(self.cfg.unschedulable_retry_seconds)
        return True

    def _running(self, attempt: int, gang: GangState) -> None:
        job = self.spec_job
        size = gang.size
        self.st.phase = "Running"
        was_running = self.old.phase == "Running"
        self.phase_message = f"all {size} pods of attempt {attempt} are running"
        transitioned = self._set(CONDITION_RUNNING, "True", Reason.GANG_RUNNING, self.phase_message)
        if (
            not was_running
            and attempt == 1
            and get_condition(self.old, CONDITION_SUSPENDED) is None
            and get_condition(self.old, CONDITION_RESTARTING) is None
        ):
            born = parse_time((self.obs.raw.get("metadata") or {}).get("creationTimestamp"))
            if born is not None:
                self.plan.metrics.append(
                    MetricEvent("time_to_running", value=(self.now - born).total_seconds())
                )
        if transitioned:
            self._observe_scheduling(gang)
        evidence = self._follow_progress(attempt)
        self._observe_first_step(transitioned)
        progress = self.st.progress
        if progress is not None and (progress.total_steps or progress.step):
            self.summary = step_summary(progress.step, progress.total_steps)
        else:
            self.summary = "running"
        # Stall detection needs positive evidence: a sample of this attempt, fetched at least
        # stallTimeoutSeconds after the step last advanced (or the gang started running),
        # that still shows the same step. No sample (unreachable, refused) is "progress
        # unknown" (ProgressKnown=False), never "no progress".
        running = get_condition(self.st, CONDITION_RUNNING)
        since = running.last_transition_time if running and not transitioned else self.now
        last = since
        if progress is not None and progress.last_update_time is not None:
            last = max(last, progress.last_update_time)
        stall = job.spec.run_policy.stall_timeout_seconds
        deadline = last + timedelta(seconds=stall)
        if evidence is not None and evidence >= deadline:
            step = progress.step if progress else 0
            self._restart(
                attempt,
                Failure(
                    True,
                    Reason.STALLED,
                    f"no training progress for {stall}s: step {step} since "
                    f"{last.strftime('%Y-%m-%dT%H:%M:%SZ')}, still at "
                    f"{evidence.strftime('%Y-%m-%dT%H:%M:%SZ')}",
                ),
            )
            return
        if self.now >= deadline:
            # Overdue but no sample proves it: look again once the next one may be in.
            self.plan.requeue(self.cfg.progress_interval_seconds)
        else:
            self.plan.requeue(self._seconds_until(deadline))

    def _observe_scheduling(self, gang: GangState) -> None:
        """``kubetune_job_scheduling_latency_seconds``: the attempt's gang was created (its
        first pod) until all its pods run, observed once, when Running turns True."""
        created = [p.created for p in gang.pods if p.created is not None]
        if created:
            seconds = (self.now - min(created)).total_seconds()
            self.plan.metrics.append(MetricEvent("scheduling_latency", value=seconds))

    def _observe_first_step(self, transitioned: bool) -> None:
        """``kubetune_job_time_to_first_step_seconds``: the gang running until rank 0 first
        reports a step past the checkpoint the attempt resumed from, once per attempt.

        Decided from the status alone (no memory in the operator, so a new leader neither
        repeats nor loses it): the attempt resumed from the newest checkpoint the status
        knew when the gang started; a checkpoint written since means the first step was
        already seen (or missed for good)."""
        running = get_condition(self.old, CONDITION_RUNNING)
        if transitioned or running is None or running.last_transition_time is None:
            since = self.now
        else:
            since = running.last_transition_time
        old_checkpoint = self.old.last_checkpoint
        if old_checkpoint is not None and old_checkpoint.time and old_checkpoint.time >= since:
            return  # written during this attempt: its first step came before
        resumes = self.spec_job.spec.checkpoint.resume != "never"
        start = old_checkpoint.step if old_checkpoint is not None and resumes else 0

        def stepped(progress: Progress | None) -> bool:
            return (
                progress is not None
                and progress.step > start
                and progress.last_update_time is not None
                and progress.last_update_time >= since
            )

        if stepped(self.st.progress) and (transitioned or not stepped(self.old.progress)):
            seconds = (self.now - since).total_seconds()
            self.plan.metrics.append(MetricEvent("time_to_first_step", value=seconds))

    def _follow_progress(self, attempt: int) -> datetime | None:
        """Mirror rank 0's latest sample of ``attempt`` into the status and set ProgressKnown;
        returns when that sample was fetched if it is usable evidence of the current step."""
        sample = self.obs.progress
        if sample is None or sample.attempt != attempt:
            return None  # nothing read from this gang yet: nothing to say
        error = sample.error
        if error is None and parse_document(sample.document) is None:
            error = INVALID_PREFIX + "not a valid progress document"
        if error is not None:
            self._set(
                CONDITION_PROGRESS_KNOWN,
                "False",
                error_reason(error),
                f"rank 0's progress document could not be read: {error}; the stall timeout "
                "is not applied while progress is unknown",
            )
            return None
        progress, checkpoint = map_progress(sample, self.st.progress, self.st.last_checkpoint)
        self.st.progress = progress
        self.st.last_checkpoint = checkpoint
        self._set(
            CONDITION_PROGRESS_KNOWN,
            "True",
            Reason.PROGRESS_REPORTED,
            "rank 0 reports its progress",
        )
        fetched = sample.fetched_at
        return fetched if fetched.tzinfo else fetched.replace(tzinfo=UTC)

    # -- output -----------------------------------------------------------------------------------
    def _finish(self) -> Plan:
        st = self.st
        if st.phase != "Running":  # ProgressKnown describes a running gang only
            remove_condition(st, CONDITION_PROGRESS_KNOWN)
        if st.phase in TERMINAL_PHASES:
            remove_condition(st, CONDITION_POD_CREATION_FAILED)
        if st.phase in (*TERMINAL_PHASES, "Suspended") or self.created_gang:
            remove_condition(st, CONDITION_UPDATES_PENDING)  # no gang, or a fresh one
        summary = self.blocked or self.summary
        if summary is None:
            failed = get_condition(st, CONDITION_FAILED)
            defaults = {
                "Succeeded": "done",
                "Failed": f"failed: {failed.reason}" if failed else "failed",
            }
            previous = st.progress.summary if st.progress else None
            if st.phase == self.old.phase and previous:
                summary = previous  # nothing new to say: keep it
            else:
                summary = defaults.get(st.phase, st.phase.lower())
        progress = st.progress or Progress()
        progress.summary = clip_summary(summary)
        st.progress = progress
        new = dump_status(st)
        old = dump_status(self.old)
        if (
            new != old
            and not self.gpu_hours_due
            and {k: v for k, v in new.items() if k != "gpuHours"}
            == {k: v for k, v in old.items() if k != "gpuHours"}
            and not goodput.update_due(
                self.old.gpu_hours, st.gpu_hours, self.now, self.holds, self._gpu_hours_period
            )
        ):
            new = old  # only the GPU-hour sums moved: they wait (the next write adds them)
        if new != old:
            self.plan.status = new
        if st.phase != self.old.phase:
            self.plan.metrics.append(MetricEvent("transition", st.phase))
            message = self.phase_message or f"phase {self.old.phase} -> {st.phase}"
            self.plan.event("Warning" if st.phase == "Failed" else "Normal", st.phase, message)
        return self.plan
