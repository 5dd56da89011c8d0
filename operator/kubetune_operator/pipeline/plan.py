"""What a FineTunePipeline needs next, decided from the pipeline and its stage jobs alone.

:func:`next_actions` is pure (no cluster, no clock of its own): the runtime reads the
pipeline and the jobs its stages name, calls it, and carries the result out. Stages run
strictly in order: the first stage without a Succeeded job is the only one acted on, so a
finished stage is never touched again, whatever happens after it.

Retry is ``spec.retryGeneration`` (a number the user increments), not an annotation the
operator removes after acting (as ModelRollout's ``kubetune.io/retry``): every stage job is
stamped with the value it was created under, so "has this retry been served?" is answered
by the jobs themselves -- idempotent across operator restarts with no second write to the
pipeline; it is declarative (Argo CD/GitOps can set it); and it bumps
``metadata.generation``, so ``status.observedGeneration`` shows it was seen.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from kubetune.api import pipeline as api
from kubetune.api.pipeline_validation import stage_job_manifest
from kubetune.api.status import Condition
from kubetune.api.validation import validate_manifest
from kubetune_operator import naming


def stage_job_name(pipeline: str, stage: str) -> str:
    """``<pipeline>-<stage>``, shortened with a stable hash (:func:`naming.short_name`) when
    longer than a job's derived names allow."""
    return naming.short_name(f"{pipeline}-{stage}")


@dataclass(frozen=True)
class Delete:
    """Delete a failed stage job (a retry), only if it is still the one seen (uid)."""

    name: str
    uid: str | None


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass
class Actions:
    """What to do, in order: deletions, creations, then the new status."""

    status: api.FineTunePipelineStatus
    create: list[dict[str, Any]] = field(default_factory=list)
    delete: list[Delete] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


def _meta(body: Mapping[str, Any]) -> Mapping[str, Any]:
    return body.get("metadata") or {}


def _owned_by(job: Mapping[str, Any], uid: str | None) -> bool:
    refs = _meta(job).get("ownerReferences") or []
    return any(r.get("kind") == api.KIND and r.get("uid") == uid for r in refs)


def _job_message(job: Mapping[str, Any]) -> str:
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("message"):
            return str(cond["message"])
    return str(status.get("message") or "")


def _condition(
    kind: str,
    ok: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
    old: list[Condition],
) -> Condition:
    status = "True" if ok else "False"
    before = next((c for c in old if c.type == kind), None)
    since = before.last_transition_time if before and before.status == status else now
    return Condition(
        type=kind,
        status=status,
        reason=reason,
        message=message[:32768],
        last_transition_time=since,
        observed_generation=generation,
    )


def _owner(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = _meta(body)
    return {
        "apiVersion": naming.API_VERSION,
        "kind": api.KIND,
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def stage_job(
    body: Mapping[str, Any],
    pipeline: api.FineTunePipeline,
    stage: api.PipelineStage,
    upstream: Mapping[str, tuple[str, str]],
) -> dict[str, Any]:
    """The FineTuneJob of ``stage``: owned by the pipeline, labelled with it and the stage,
    and annotated with its lineage (``upstream``: stage -> (job, output))."""
    name = str(pipeline.metadata.name)
    outputs = {s: out for s, (_job, out) in upstream.items()}
    manifest = stage_job_manifest(pipeline, stage, outputs)
    inputs = stage.inputs.named() if stage.inputs else {}
    lineage = {
        "pipeline": name,
        "stage": stage.name,
        "inputs": {
            key: {"stage": up, "job": upstream[up][0], "output": upstream[up][1]}
            for key, up in inputs.items()
        },
    }
    meta = manifest["metadata"]
    meta["name"] = stage_job_name(name, stage.name)
    meta["labels"] = {
        api.LABEL_PIPELINE: naming.job_label_value(name),
        api.LABEL_STAGE: stage.name,
    }
    meta["annotations"] = {
        api.ANNOTATION_LINEAGE: json.dumps(lineage, sort_keys=True, separators=(",", ":")),
        api.ANNOTATION_RETRY: str(pipeline.spec.retry_generation),
    }
    meta["ownerReferences"] = [_owner(body)]
    return manifest


def _invalid(
    body: Mapping[str, Any], problems: list[str], now: datetime, old: api.FineTunePipelineStatus
) -> Actions:
    generation = _meta(body).get("generation")
    message = "; ".join(problems)
    status = old.model_copy(
        update={
            "phase": "Failed",
            "observed_generation": generation,
            "message": f"invalid pipeline: {message}"[:4096],
            "conditions": [
                _condition(
                    api.CONDITION_VALID,
                    False,
                    "InvalidSpec",
                    message,
                    now,
                    generation,
                    old.conditions,
                ),
                _condition(
                    api.CONDITION_FAILED,
                    True,
                    "InvalidSpec",
                    message,
                    now,
                    generation,
                    old.conditions,
                ),
            ],
        }
    )
    return Actions(status, events=[Event("Warning", "InvalidSpec", message[:1024])])


def _old_status(body: Mapping[str, Any]) -> api.FineTunePipelineStatus:
    try:
        return api.FineTunePipelineStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return api.FineTunePipelineStatus()


def next_actions(
    body: Mapping[str, Any], jobs: Mapping[str, Mapping[str, Any]], now: datetime
) -> Actions:
    """The next step of pipeline ``body`` given its stage jobs (``jobs``: job name -> body,
    the stage jobs that exist): at most one job created or deleted, and the full status."""
    old = _old_status(body)
    try:
        pipeline = api.FineTunePipeline.model_validate(body)
    except ValidationError as exc:
        return _invalid(body, [str(e["msg"]) for e in exc.errors()], now, old)
    order = api.order_problems(pipeline.spec)
    if order:
        return _invalid(body, [str(p) for p in order], now, old)
    meta = _meta(body)
    name, uid, generation = str(meta.get("name")), meta.get("uid"), meta.get("generation")
    retry = pipeline.spec.retry_generation
    actions = Actions(api.FineTunePipelineStatus())
    stages: list[dict[str, Any]] = []
    upstream: dict[str, tuple[str, str]] = {}  # stage -> (job, output), Succeeded only
    phase, current, message, reason = "Succeeded", None, "every stage succeeded", "Succeeded"
    blocked = False
    for stage in pipeline.spec.stages:
        job_name = stage_job_name(name, stage.name)
        job = jobs.get(job_name)
        entry: dict[str, Any] = {
            "name": stage.name,
            "job": job_name,
            "phase": "Waiting",
            "output": api.stage_output(pipeline.spec, stage),
        }
        stages.append(entry)
        if blocked:
            continue
        blocked, current = True, stage.name
        if job is None:
            manifest = stage_job(body, pipeline, stage, upstream)
            report = validate_manifest(manifest)
            if report.ok:
                actions.create.append(manifest)
                entry.update(phase="Pending", retryGeneration=retry)
                phase, reason = "Running", "StageCreated"
                message = f"stage {stage.name}: created FineTuneJob {job_name}"
                actions.events.append(Event("Normal", reason, message))
            else:
                problems = "; ".join(str(p) for p in report.errors)
                entry.update(phase="Failed", message=problems[:4096])
                phase, reason = "Failed", "InvalidStage"
                message = f"stage {stage.name}: its FineTuneJob would be invalid: {problems}"
            continue
        if not _owned_by(job, uid):
            entry.update(phase="Failed", message="a FineTuneJob of that name is not ours")
            phase, reason = "Failed", "JobNameTaken"
            message = f"stage {stage.name}: FineTuneJob {job_name} exists, not owned by {name}"
            continue
        status = job.get("status") or {}
        job_retry = int((_meta(job).get("annotations") or {}).get(api.ANNOTATION_RETRY) or 0)
        output = ((job.get("spec") or {}).get("output") or {}).get("uri") or entry["output"]
        entry.update(
            phase=status.get("phase") or "Pending",
            output=output,
            startTime=status.get("startTime"),
            completionTime=status.get("completionTime"),
            retryGeneration=job_retry,
        )
        if entry["phase"] == "Succeeded":
            upstream[stage.name] = (job_name, str(output))
            blocked, current = False, None
            continue
        if entry["phase"] != "Failed":
            phase, reason = "Running", "StageRunning"
            message = f"stage {stage.name}: FineTuneJob {job_name} is {entry['phase']}"
            continue
        failure = _job_message(job)
        if job_retry < retry:
            actions.delete.append(Delete(job_name, _meta(job).get("uid")))
            entry.update(phase="Pending", message=f"retrying (retryGeneration {retry})")
            phase, reason = "Running", "RetryingStage"
            message = f"stage {stage.name}: retrying (retryGeneration {retry})"
            actions.events.append(Event("Normal", reason, message))
        else:
            entry["message"] = failure[:4096] or None
            phase, reason = "Failed", "StageFailed"
            message = f"stage {stage.name} failed: {failure or 'see its FineTuneJob'}"
    conditions = [
        _condition(api.CONDITION_VALID, True, "Valid", "", now, generation, old.conditions),
        _condition(
            api.CONDITION_SUCCEEDED,
            phase == "Succeeded",
            reason,
            message,
            now,
            generation,
            old.conditions,
        ),
        _condition(
            api.CONDITION_FAILED,
            phase == "Failed",
            reason,
            message,
            now,
            generation,
            old.conditions,
        ),
    ]
    if phase == "Failed" and old.phase != "Failed":
        actions.events.append(Event("Warning", reason, message[:1024]))
    actions.status = api.FineTunePipelineStatus(
        phase=phase,
        conditions=conditions,
        observed_generation=generation,
        current_stage=current,
        stages=[api.StageStatus.model_validate(e) for e in stages],
        message=message[:4096],
    )
    return actions
