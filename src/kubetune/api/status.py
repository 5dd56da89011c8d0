"""The observed state of a FineTuneJob, written only by the operator."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from kubetune.api.base import ApiModel
from kubetune.api.evaluation import EvaluationStatus

Phase = Literal["Pending", "Validating", "Queued", "Running", "Suspended", "Succeeded", "Failed"]
PHASES: tuple[str, ...] = (
    "Pending",
    "Validating",
    "Queued",
    "Running",
    "Suspended",
    "Succeeded",
    "Failed",
)
TERMINAL_PHASES: tuple[str, ...] = ("Succeeded", "Failed")

# Condition types (positive polarity, as the API conventions ask).
CONDITION_VALIDATED = "Validated"
CONDITION_ADMITTED = "Admitted"
CONDITION_RUNNING = "Running"
CONDITION_RESTARTING = "Restarting"
CONDITION_SUSPENDED = "Suspended"
CONDITION_SUCCEEDED = "Succeeded"
CONDITION_FAILED = "Failed"
CONDITION_CONFIG_WARNING = "ConfigWarning"
#: Whether the tuned model may be rolled out (set when the job Succeeds; see evaluation.py).
CONDITION_PROMOTABLE = "Promotable"
#: Whether the validation pod's memory estimate fits the requested GPUs (status.plan).
CONDITION_FITS_GPU_MEMORY = "FitsGPUMemory"


class Condition(ApiModel):
    """A standard Kubernetes condition."""

    type: str = Field(max_length=316, description="Condition type, e.g. Validated, Running.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=1024, description="CamelCase reason for the last transition.")
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    last_transition_time: datetime = Field(description="When the status last changed.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the condition was set for."
    )


class Progress(ApiModel):
    """Training progress, mirrored from the trainer's rank-0 progress document."""

    step: int = Field(default=0, ge=0, description="Optimizer steps done.")
    total_steps: int = Field(default=0, ge=0, description="Optimizer steps planned.")
    epoch: float = Field(default=0.0, ge=0.0, description="Fractional epoch.")
    percent: int = Field(default=0, ge=0, le=100, description="step / totalSteps in percent.")
    eta_seconds: int | None = Field(default=None, ge=0, description="Estimated seconds left.")
    loss: float | None = Field(default=None, description="Latest training loss.")
    eval_loss: float | None = Field(default=None, description="Latest evaluation loss.")
    tokens_per_second: float | None = Field(
        default=None, ge=0.0, description="Training throughput across the gang."
    )
    summary: str | None = Field(
        default=None, max_length=128, description="Short form for kubectl, e.g. 120/300 (40%)."
    )
    warnings: list[Annotated[str, StringConstraints(max_length=1024)]] | None = Field(
        default=None,
        max_length=4,
        description="Online RL: the newest reward-hacking guard warnings (response length "
        "drift, training reward rising while a held-out reward model's score falls).",
    )
    dp_epsilon: float | None = Field(
        default=None,
        ge=0.0,
        description="Differential privacy: the epsilon spent so far (spec."
        "differentialPrivacy); training stops before it would exceed targetEpsilon.",
    )
    last_update_time: datetime | None = Field(
        default=None, description="When the trainer last reported progress."
    )


class CheckpointStatus(ApiModel):
    """The newest complete checkpoint."""

    step: int = Field(ge=0, description="Optimizer step of the checkpoint.")
    path: str = Field(max_length=2048, description="Location of the checkpoint.")
    time: datetime | None = Field(default=None, description="When it was completed.")


class GPUHours(ApiModel):
    """GPU time the job was given, and how much of it produced training steps that were kept.

    ``allocated`` counts GPUs requested by the job's pods x the time each pod held a node
    (bound to it and not terminated: image pulls, start-up and a graceful stop included),
    summed over every attempt. ``productive`` counts the gang's GPUs x the time between two
    progress samples of one gang in which the step advanced, less what a restart threw away:
    when a new gang resumes, it falls back to the value at the step it resumed from (see
    ``checkpointStep``). Not productive: scheduling waits, start-up and model loading,
    evaluation and checkpoint pauses, stalls, backoffs, and steps redone after a restart.
    The other fields are the operator's bookkeeping, kept here so that an operator restart
    or a failover continues the sums instead of counting anything twice.
    """

    allocated: float = Field(
        default=0.0, ge=0.0, description="GPU-hours held by the job's pods, over all attempts."
    )
    productive: float = Field(
        default=0.0, ge=0.0, description="GPU-hours of training steps that were kept."
    )
    goodput: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="productive / allocated (0-1); absent while nothing was allocated.",
    )
    observed_time: datetime | None = Field(
        default=None, description="allocated covers the job's pods up to this time."
    )
    sample_time: datetime | None = Field(
        default=None, description="When the last progress sample counted was fetched."
    )
    sample_step: int | None = Field(
        default=None, ge=0, description="The optimizer step that sample reported."
    )
    sampled_pod_uid: str | None = Field(
        default=None,
        max_length=128,
        description="UID of the rank-0 pod that sample came from: a new one means a new "
        "gang, which resumes from a checkpoint.",
    )
    checkpoint_step: int | None = Field(
        default=None, ge=0, description="Step of the newest checkpoint the trainer reported."
    )
    productive_at_checkpoint: float | None = Field(
        default=None,
        ge=0.0,
        description="productive when that checkpoint was taken: what a gang resuming from "
        "it keeps.",
    )


class Lineage(ApiModel):
    """What went into the tuned model, for reproducibility and audits."""

    base_model_digest: str | None = Field(
        default=None, max_length=128, description="sha256 of the base-model weights and config."
    )
    dataset_digest: str | None = Field(
        default=None, max_length=128, description="sha256 of the training (and eval) data."
    )
    resolved_config_hash: str | None = Field(
        default=None, max_length=128, description="sha256 of the resolved spec the trainer ran."
    )
    image: str | None = Field(default=None, max_length=1024, description="Trainer image used.")


class ResourcePlan(ApiModel):
    """Peak GPU memory per process and time per epoch, estimated by the validation pod
    from the model's config.json before any GPU is requested (``kubetune plan`` computes
    the same on a laptop). An estimate: a job that does not fit is warned about, not
    refused."""

    peak_memory_bytes: int = Field(ge=0, description="Estimated peak memory per GPU process.")
    memory_bytes: dict[Annotated[str, StringConstraints(max_length=64)], int] | None = Field(
        default=None,
        max_length=16,
        json_schema_extra={"maxProperties": 16},
        description="The estimate's parts in bytes: weights, gradients, optimizer, buffers, "
        "autocast copies, activations, logits (and the other models of online RL).",
    )
    gpu: str | None = Field(
        default=None,
        max_length=128,
        description="GPU product the estimate was compared with, from resources.nodeSelector "
        "(nvidia.com/gpu.product or nvidia.com/gpu.memory); absent when not named.",
    )
    gpu_memory_bytes: int | None = Field(default=None, ge=0, description="That GPU's memory.")
    fit: Literal["Fits", "Tight", "DoesNotFit", "Unknown"] = Field(
        default="Unknown",
        description="Fits (under 90% of the GPU's memory less 1 GiB), Tight (under 100%), "
        "DoesNotFit, or Unknown (GPU product not named).",
    )
    setup: str | None = Field(
        default=None, max_length=512, description="The settings the estimate assumed."
    )
    tokens_per_epoch: int | None = Field(
        default=None, ge=0, description="Training tokens in one epoch (tokenized by the pod)."
    )
    tokens_per_second: float | None = Field(
        default=None, ge=0.0, description="Throughput of the gang the time assumes."
    )
    throughput: str | None = Field(
        default=None,
        max_length=256,
        description="Where that throughput comes from (an assumed MFU x the GPU's peak).",
    )
    epoch_seconds: float | None = Field(
        default=None, ge=0.0, description="Estimated seconds per epoch at that throughput."
    )
    suggestions: list[Annotated[str, StringConstraints(max_length=256)]] | None = Field(
        default=None,
        max_length=5,
        description="What to change, in order, when it does not fit, each with its estimate.",
    )


class AppliedProfile(ApiModel):
    """One profile layer laid under the job's spec (see ``kubetune.api.profiles``)."""

    kind: Literal["FineTuneProfile", "ClusterFineTuneProfile"] = Field(
        description="Kind of the profile."
    )
    name: str = Field(max_length=253, description="Name of the profile.")
    section: str = Field(
        max_length=64,
        description="Which part of it applied: defaults, or methods.<method> (the overlay "
        "for the job's method).",
    )
    resource_version: str | None = Field(
        default=None,
        max_length=64,
        description="The profile's metadata.resourceVersion when it was applied.",
    )


class FineTuneJobStatus(ApiModel):
    """Observed state of a FineTuneJob."""

    phase: Phase = Field(default="Pending", description="High-level lifecycle phase.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=32,
        description="Standard conditions (Validated, Admitted, Running, Restarting, "
        "Suspended, Succeeded, Failed, ConfigWarning, ProgressKnown, ResourceConflict, "
        "Promotable, FitsGPUMemory).",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation last acted on."
    )
    attempts: int = Field(default=0, ge=0, description="Gangs started so far (1 + restarts).")
    validation_runs: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Validation pods created so far (reruns after infrastructure failures, "
        "or pods that vanished, included): bounds them even when no pod is left to count.",
    )
    gpus: int | None = Field(default=None, ge=0, description="GPUs the gang requests in total.")
    start_time: datetime | None = Field(default=None, description="When the first gang started.")
    completion_time: datetime | None = Field(default=None, description="When the job finished.")
    progress: Progress | None = Field(default=None, description="Training progress.")
    last_checkpoint: CheckpointStatus | None = Field(
        default=None, description="Newest complete checkpoint."
    )
    output_uri: str | None = Field(
        default=None, max_length=1024, description="Where the results were written."
    )
    lineage: Lineage | None = Field(default=None, description="Inputs of the tuned model.")
    profiles: list[AppliedProfile] | None = Field(
        default=None,
        max_length=64,
        description="The profile layers laid under the spec, lowest precedence first, "
        "recorded (and frozen) when the operator first resolved the job; an empty list: "
        "resolved, no profile applied. Absent: not resolved yet.",
    )
    profile_defaults: dict[str, Any] | None = Field(
        default=None,
        description="What those profiles set, merged in order: the frozen defaults the "
        "job's own spec is laid over from then on (later profile edits do not change it). "
        "A partial spec (the CRD types it as one).",
    )
    gpu_hours: GPUHours | None = Field(
        default=None,
        description="GPU-hours allocated and productive, and their ratio (goodput); absent "
        "until a pod of the job held a GPU.",
    )
    evaluation: EvaluationStatus | None = Field(
        default=None,
        description="Evaluation of the tuned model against its baseline and the gates' "
        "verdicts; set when the job succeeds with spec.evaluation.",
    )
    plan: ResourcePlan | None = Field(
        default=None,
        description="Peak GPU memory and time per epoch estimated in the validation pass "
        "(condition FitsGPUMemory; a Warning Event when it does not fit).",
    )
