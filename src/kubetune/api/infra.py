"""Where and how the job runs: GPUs, distribution, checkpoints, outputs, run policy."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from kubetune.api.base import ApiModel, cel, validations
from kubetune.api.cel import parse_quantity
from kubetune.api.common import (
    LABEL_KEY_PATTERN,
    LABEL_VALUE_PATTERN,
    DNSSubdomain,
    LabelValue,
    OutputLocation,
    Quantity,
    SecretReference,
    Toleration,
)

ResourceName = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=253,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$",
    ),
]


SHARED_MEMORY_CAP_BYTES = 16 * 2**30


class ResourcesSpec(ApiModel):
    """The gang: how many pods, how many GPUs each, and where they may run."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "!has(self.sharedMemory) || !isQuantity(self.sharedMemory) || "
                "!isQuantity(self.memory) || "
                "!quantity(self.sharedMemory).isGreaterThan(quantity(self.memory))",
                "sharedMemory must not be larger than memory: /dev/shm is memory-backed "
                "and counts against the pod's memory limit; lower resources.sharedMemory "
                "or raise resources.memory",
                field_path=".sharedMemory",
            ),
        )
    }

    nodes: int = Field(
        default=1, ge=1, le=512, description="Number of training pods (one per node)."
    )
    gpus_per_node: int = Field(
        default=1,
        ge=0,
        le=16,
        description="GPUs per pod; also the number of torchrun processes per pod.",
    )
    gpu_resource_name: ResourceName = Field(
        default="nvidia.com/gpu", description="Extended resource name of the GPUs."
    )
    cpu: Quantity = Field(default="8", description="CPU request and limit per pod.")
    memory: Quantity = Field(default="64Gi", description="Memory request and limit per pod.")
    shared_memory: Quantity | None = Field(
        default=None,
        description="Size of /dev/shm (memory-backed, counts against memory) for data "
        "loaders and NCCL. Default: a quarter of memory, at most 16Gi.",
    )
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=32,
        description="Node labels the pods must match (e.g. a GPU product).",
        json_schema_extra={
            "maxProperties": 32,
            **validations(
                cel(
                    f"self.all(k, k.matches('{LABEL_KEY_PATTERN}'))",
                    "nodeSelector keys must be valid label keys ([prefix/]name)",
                )
            ),
        },
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Tolerations for tainted GPU nodes."
    )
    priority_class_name: DNSSubdomain | None = Field(
        default=None, description="PriorityClass of the training pods."
    )

    def shared_memory_size(self) -> str:
        """/dev/shm's size: as set, else a quarter of memory capped at 16Gi.

        A fixed default would exceed small pods' memory (the emptyDir counts against the
        limit), so it scales with ``memory`` instead of being refused.
        """
        if self.shared_memory is not None:
            return self.shared_memory
        quarter = int(parse_quantity(self.memory).value) // 4
        return f"{min(quarter, SHARED_MEMORY_CAP_BYTES) // 2**20}Mi"


class DistributedSpec(ApiModel):
    """How the model and optimizer state are spread over the GPUs."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "!has(self.zeroStage) || self.strategy == 'deepspeed'",
                "zeroStage applies only to strategy deepspeed",
                field_path=".zeroStage",
            ),
            cel(
                "self.offload == 'none' || self.strategy != 'ddp'",
                "offload needs strategy deepspeed or fsdp",
                field_path=".offload",
            ),
            cel(
                "self.offload != 'all' || self.strategy == 'fsdp' || "
                "(has(self.zeroStage) && self.zeroStage == 3)",
                "offload all (parameters too) needs fsdp or deepspeed zeroStage 3",
                field_path=".offload",
            ),
        )
    }

    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field(
        default="ddp",
        description="ddp replicates the model; fsdp and deepspeed shard it across GPUs.",
    )
    zero_stage: Literal[1, 2, 3] | None = Field(
        default=None,
        description="DeepSpeed ZeRO stage: 1 shards optimizer state, 2 adds gradients, "
        "3 adds parameters. Default 2 with deepspeed.",
    )
    offload: Literal["none", "optimizer", "all"] = Field(
        default="none",
        description="Offload optimizer state (or parameters too) to CPU memory.",
    )
    rendezvous_timeout_seconds: int = Field(
        default=900,
        ge=30,
        le=7200,
        description="How long torchrun waits for the whole gang to join.",
    )


class CheckpointSpec(ApiModel):
    """Checkpointing; a restarted gang resumes from the newest complete checkpoint."""

    interval_steps: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Checkpoint every N optimizer steps."
    )
    interval_seconds: int | None = Field(
        default=1800,
        ge=60,
        le=86400,
        description="Checkpoint at least this often in wall-clock time.",
    )
    keep_last: int = Field(default=2, ge=1, le=100, description="Complete checkpoints kept.")
    resume: Literal["auto", "never"] = Field(
        default="auto",
        description="auto resumes from the newest complete checkpoint in the output location.",
    )


class OutputSpec(ApiModel):
    """Where the tuned weights, metrics and model card go."""

    uri: OutputLocation = Field(
        description="Output location: pvc://<claim>/<path>, s3://<bucket>/<prefix> or an "
        "absolute path. Checkpoints are written under it."
    )
    merge_adapter: bool = Field(
        default=False,
        description="Also export the base model with the LoRA weights merged in (lora/qlora only).",
    )
    credentials_secret_ref: SecretReference | None = Field(
        default=None, description="Secret with storage credentials for s3:// locations."
    )


class RunPolicy(ApiModel):
    """Retries, deadlines, suspension, clean-up and queueing."""

    backoff_limit: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Gang restarts allowed after retryable failures (node loss, "
        "preemption, infrastructure errors).",
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail the job when it has run longer than this."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete the job this long after it finished."
    )
    suspend: bool = Field(
        default=False, description="Remove the pods but keep the job and its checkpoints."
    )
    stall_timeout_seconds: int = Field(
        default=1800,
        ge=60,
        le=86400,
        description="Restart the gang from its checkpoint when progress has not advanced "
        "for this long.",
    )
    scheduling_timeout_seconds: int = Field(
        default=600,
        ge=10,
        le=86400,
        description="Report (and release) a gang that cannot be placed within this time.",
    )
    queue_name: (
        Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=LABEL_VALUE_PATTERN)]
        | None
    ) = Field(
        default=None,
        description="Kueue LocalQueue that admits the gang. It becomes the pods' "
        "kueue.x-k8s.io/queue-name label, so it must be a valid label value.",
    )
    gpu_hour_budget: float | None = Field(
        default=None,
        gt=0,
        le=1e9,
        description="Most GPU-hours the job may hold (status.gpuHours.allocated, over all "
        "attempts). When they are spent the gang is stopped gracefully (the trainer "
        "checkpoints on SIGTERM) and the job is Suspended with reason "
        "GPUHourBudgetExhausted; raising the budget, or removing it, resumes the job from "
        "its newest checkpoint. A Warning Event is posted when 90% is spent.",
    )
