"""Conditions and status patches, following the Kubernetes API conventions.

``lastTransitionTime`` changes only when a condition's status changes (reason and message
updates keep it), so it can anchor timeouts: the operator stores its clocks in the
object it reports on, not in memory, and a restarted operator picks them up.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

# Condition types (positive polarity): the API's own constants, plus Restarting below.
from kubetune.api.status import (
    CONDITION_ADMITTED,
    CONDITION_CONFIG_WARNING,
    CONDITION_FAILED,
    CONDITION_RUNNING,
    CONDITION_SUCCEEDED,
    CONDITION_SUSPENDED,
    CONDITION_VALIDATED,
    Condition,
    FineTuneJobStatus,
)

ConditionStatus = Literal["True", "False", "Unknown"]

#: True while the gang is being replaced (after a retryable failure, a release of an
#: unplaceable gang, or a resume): every existing pod belongs to the old gang, and its
#: lastTransitionTime anchors the backoff before the new gang is created.
CONDITION_RESTARTING = "Restarting"

#: While Running: whether rank 0's progress document could be read. False means "progress
#: unknown" (unreachable, refused or invalid), never "no progress": a stall is only ever
#: decided on samples that show the step not advancing.
CONDITION_PROGRESS_KNOWN = "ProgressKnown"

#: True while the API server refuses to create one of the job's pods for a reason that
#: may pass (a full ResourceQuota, a ServiceAccount not created yet): the server's own
#: message, so the job never waits silently (after ReplicaSet's ReplicaFailure).
CONDITION_POD_CREATION_FAILED = "PodCreationFailed"

#: True while the running (or queued) gang was created from an older version of a spec
#: section that is editable at any time (env, image, checkpoint, ...): the edit waits for
#: the next attempt, and the message says which fields and how to apply them now.
CONDITION_UPDATES_PENDING = "UpdatesPending"

__all__ = [
    "CONDITION_ADMITTED",
    "CONDITION_CONFIG_WARNING",
    "CONDITION_FAILED",
    "CONDITION_POD_CREATION_FAILED",
    "CONDITION_PROGRESS_KNOWN",
    "CONDITION_RESTARTING",
    "CONDITION_RUNNING",
    "CONDITION_SUCCEEDED",
    "CONDITION_SUSPENDED",
    "CONDITION_UPDATES_PENDING",
    "CONDITION_VALIDATED",
]

MAX_MESSAGE = 32768


def get_condition(status: FineTuneJobStatus, kind: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == kind), None)


def is_true(status: FineTuneJobStatus, kind: str) -> bool:
    cond = get_condition(status, kind)
    return cond is not None and cond.status == "True"


def set_condition(
    status: FineTuneJobStatus,
    kind: str,
    state: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
    *,
    force_transition: bool = False,
) -> bool:
    """Set a condition; returns True when its status changed (a transition)."""
    message = message[:MAX_MESSAGE]
    existing = get_condition(status, kind)
    if existing is not None and existing.status == state and not force_transition:
        existing.reason = reason
        existing.message = message
        existing.observed_generation = generation
        return False
    new = Condition(
        type=kind,
        status=state,
        reason=reason,
        message=message,
        last_transition_time=now,
        observed_generation=generation,
    )
    if existing is None:
        status.conditions = [*status.conditions, new]
    else:  # keep the list order stable for kubectl describe
        status.conditions = [new if c.type == kind else c for c in status.conditions]
    return True


def remove_condition(status: FineTuneJobStatus, kind: str) -> bool:
    before = len(status.conditions)
    status.conditions = [c for c in status.conditions if c.type != kind]
    return len(status.conditions) != before


def dump_status(status: FineTuneJobStatus) -> dict[str, Any]:
    """The status as the API stores it (camelCase, no nulls)."""
    data: dict[str, Any] = json.loads(status.model_dump_json(by_alias=True, exclude_none=True))
    return data


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any] | None:
    """An RFC 7386 merge patch from ``old`` to ``new`` (top-level keys; lists replace), or
    None if nothing changed."""
    patch: dict[str, Any] = {}
    for key in set(old) | set(new):
        if key not in new:
            patch[key] = None
        elif old.get(key) != new[key]:
            if isinstance(old.get(key), dict) and isinstance(new[key], dict):
                sub = merge_patch(old[key], new[key])
                if sub:
                    patch[key] = sub
            else:
                patch[key] = new[key]
    return patch or None
