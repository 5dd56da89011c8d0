"""The reasons the operator writes to conditions, Events and metric labels.

A :class:`~enum.StrEnum`, so the values on the wire are exactly these strings while the
code branches on members (a typo is an error, not a branch never taken). Reasons of a
trainer exit come from the contract (:func:`kubetune.contract.exit_codes.exit_reason`).
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # Why a pod of the gang stopped (the infrastructure ones: see INFRASTRUCTURE below).
    NODE_LOST = "NodeLost"
    NODE_SHUTDOWN = "NodeShutdown"
    PREEMPTED = "Preempted"
    EVICTED = "Evicted"
    ADMISSION_FAILED = "AdmissionFailed"
    POD_DELETED = "PodDeleted"
    POD_LOST = "PodLost"
    DISRUPTED = "Disrupted"
    POD_FAILED = "PodFailed"
    OOM_KILLED = "OOMKilled"
    STALLED = "Stalled"
    # Verdicts.
    COMPLETED = "Completed"
    INVALID_SPEC = "InvalidSpec"
    INVALID_CONFIG = "InvalidConfig"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    VALIDATION_TIMEOUT = "ValidationTimeout"
    # Validation.
    VALIDATING = "Validating"
    VALIDATION_PENDING = "ValidationPending"
    VALIDATION_PASSED = "ValidationPassed"
    VALIDATION_DISABLED = "ValidationDisabled"
    # The gang.
    GANG_CREATED = "GangCreated"
    GANG_PENDING = "GangPending"
    WAITING_FOR_QUEUE = "WaitingForQueue"
    GANG_SCHEDULED = "GangScheduled"
    CONTAINERS_STARTING = "ContainersStarting"
    GANG_RUNNING = "GangRunning"
    GANG_UNSCHEDULABLE = "GangUnschedulable"
    GANG_RELEASED = "GangReleased"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    # Configuration and the API.
    NOT_RECOMMENDED = "NotRecommended"
    CONFIG_WARNING = "ConfigWarning"
    FAILED_CREATE = "FailedCreate"


#: Reasons that say "the machine went away", preferred as the root cause of a gang failure
#: over the collateral exits of the other ranks (which lose their peers and exit non-zero).
INFRASTRUCTURE = frozenset(
    {
        Reason.NODE_LOST,
        Reason.NODE_SHUTDOWN,
        Reason.PREEMPTED,
        Reason.EVICTED,
        Reason.ADMISSION_FAILED,
        Reason.POD_DELETED,
        Reason.POD_LOST,
    }
)
