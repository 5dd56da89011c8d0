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
    # The ProgressKnown condition (rank 0's progress document).
    PROGRESS_REPORTED = "ProgressReported"
    PROGRESS_UNREACHABLE = "ProgressUnreachable"
    PROGRESS_INVALID = "ProgressInvalid"
    # Verdicts.
    COMPLETED = "Completed"
    INVALID_SPEC = "InvalidSpec"
    FORBIDDEN_BY_POLICY = "ForbiddenByPolicy"
    INVALID_CONFIG = "InvalidConfig"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    VALIDATION_TIMEOUT = "ValidationTimeout"
    # spec.profile names no FineTuneProfile/ClusterFineTuneProfile (waiting for it, then a
    # verdict).
    PROFILE_NOT_FOUND = "ProfileNotFound"
    # Validation.
    VALIDATING = "Validating"
    VALIDATION_PENDING = "ValidationPending"
    VALIDATION_PASSED = "ValidationPassed"
    VALIDATION_DISABLED = "ValidationDisabled"
    # The FitsGPUMemory condition (status.plan, from the validation pod's estimate).
    FITS_GPU_MEMORY = "FitsGPUMemory"
    TIGHT_GPU_MEMORY = "TightGPUMemory"
    EXCEEDS_GPU_MEMORY = "ExceedsGPUMemory"
    GPU_TYPE_UNKNOWN = "GPUTypeUnknown"
    # The gang.
    GANG_CREATED = "GangCreated"
    GANG_PENDING = "GangPending"
    WAITING_FOR_QUEUE = "WaitingForQueue"
    # Kueue (queueing.py): the Workload API is not served; the admitted flavor is not known yet.
    KUEUE_UNAVAILABLE = "KueueUnavailable"
    WAITING_FOR_FLAVOR = "WaitingForFlavor"
    GANG_SCHEDULED = "GangScheduled"
    CONTAINERS_STARTING = "ContainersStarting"
    GANG_RUNNING = "GangRunning"
    GANG_UNSCHEDULABLE = "GangUnschedulable"
    GANG_RELEASED = "GangReleased"
    # Gang admission without Kueue (admission.py): the gang stays gated, holding nothing.
    WAITING_FOR_CAPACITY = "WaitingForCapacity"
    GANG_NEVER_FITS = "GangNeverFits"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    RESTART_REQUESTED = "RestartRequested"
    # spec.runPolicy.gpuHourBudget: spent (the job is Suspended until it is raised), and the
    # Warning Event when 90% of it is spent.
    GPU_HOUR_BUDGET_EXHAUSTED = "GPUHourBudgetExhausted"
    GPU_HOUR_BUDGET_NEARLY_SPENT = "GPUHourBudgetNearlySpent"
    # Configuration and the API.
    NOT_RECOMMENDED = "NotRecommended"
    CONFIG_WARNING = "ConfigWarning"
    FAILED_CREATE = "FailedCreate"
    # The API server refused a pod in a way a retry cannot change (schema, Pod Security,
    # an admission webhook): a verdict.
    POD_CREATION_REFUSED = "PodCreationRefused"
    # Spec edits the running gang does not see (UpdatesPending).
    APPLIES_TO_NEXT_ATTEMPT = "AppliesToNextAttempt"
    # A placed pod that cannot start (the kubelet's container waiting reasons), and the
    # deadline that releases its gang (operator setting startup_timeout_seconds).
    CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
    CREATE_CONTAINER_ERROR = "CreateContainerError"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    ERR_IMAGE_PULL = "ErrImagePull"
    INVALID_IMAGE_NAME = "InvalidImageName"
    ERR_IMAGE_NEVER_PULL = "ErrImageNeverPull"
    STARTUP_TIMEOUT = "StartupTimeout"
    # No node of the cluster could ever hold a pod of the gang (resources, selector, taints).
    NO_NODE_FITS = "NoNodeFits"
    # A child's name is taken by an object the job does not own.
    RESOURCE_CONFLICT = "ResourceConflict"
    WAITING_FOR_GARBAGE_COLLECTION = "WaitingForGarbageCollection"


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
