"""The trainer's view of a job: the one module that knows the API's field names.

The operator hands the trainer a ``ResolvedJob`` document (``kubetune.api.resolve``):
the FineTuneJob spec with every default filled in plus derived values (world size,
gradient accumulation). This module validates that document with the API's own
pydantic models and flattens it into small frozen dataclasses the rest of the trainer
uses. Nothing here re-derives policy (defaults, accumulation): if the API renames a
field, this is the only file that changes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from kubetune.api.resolve import ResolvedJob
from kubetune_trainer.errors import InvalidConfigError

Method = Literal["full", "lora", "qlora", "prefix", "prompt", "adapter", "reward", "dpo"]
DataFormat = Literal["chat", "promptCompletion", "text", "preference"]
Precision = Literal["bf16", "fp16", "fp32"]

# Methods whose trainable part is an adapter saved separately from the base weights.
ADAPTER_METHODS = frozenset({"lora", "qlora", "prefix", "prompt", "adapter"})
# Methods whose model input is changed by virtual tokens: no padding-free batching.
VIRTUAL_TOKEN_METHODS = frozenset({"prefix", "prompt"})


@dataclass(frozen=True)
class ModelSettings:
    uri: str
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False


@dataclass(frozen=True)
class DataSettings:
    train_uri: str
    format: DataFormat
    eval_uri: str | None = None
    field_mapping: dict[str, str] = field(default_factory=dict)
    eval_split: float = 0.0
    max_seq_length: int = 2048
    packing: bool = True
    completion_only_loss: bool = True
    skip_invalid_rows: bool = False


@dataclass(frozen=True)
class TrainSettings:
    learning_rate: float
    epochs: float | None
    max_steps: int | None
    global_batch_size: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    weight_decay: float
    warmup_ratio: float
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"]
    seed: int
    gradient_checkpointing: bool
    precision: Literal["auto", "bf16", "fp16", "fp32"]
    max_grad_norm: float


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("all-linear",)
    use_dora: bool = False


@dataclass(frozen=True)
class QuantizationSettings:
    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "bfloat16"


@dataclass(frozen=True)
class VirtualTokenSettings:
    num_virtual_tokens: int = 20
    init: Literal["random", "text"] = "random"
    init_text: str | None = None


@dataclass(frozen=True)
class AdapterSettings:
    bottleneck_size: int = 64
    non_linearity: Literal["relu", "gelu", "silu"] = "gelu"
    scaling: float = 1.0
    dropout: float = 0.0


@dataclass(frozen=True)
class DpoSettings:
    beta: float = 0.1
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    reference_model_uri: str | None = None


@dataclass(frozen=True)
class DistributedSettings:
    strategy: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    zero_stage: int | None = None
    offload: Literal["none", "optimizer", "all"] = "none"
    world_size: int = 1
    nproc_per_node: int = 1
    nodes: int = 1


@dataclass(frozen=True)
class CheckpointSettings:
    interval_steps: int | None = None
    interval_seconds: int | None = 1800
    keep_last: int = 2
    resume: Literal["auto", "never"] = "auto"


@dataclass(frozen=True)
class OutputSettings:
    uri: str
    merge_adapter: bool = False


@dataclass(frozen=True)
class HealthSettings:
    grad_norm_abort_threshold: float = 1.0e4
    nan_tolerance_steps: int = 0


@dataclass(frozen=True)
class JobConfig:
    """Everything one trainer process needs, flattened from the resolved document."""

    name: str
    namespace: str
    attempt: int
    method: Method
    model: ModelSettings
    data: DataSettings
    train: TrainSettings
    distributed: DistributedSettings
    checkpoint: CheckpointSettings
    output: OutputSettings
    health: HealthSettings
    lora: LoraSettings | None = None
    quantization: QuantizationSettings | None = None
    prefix: VirtualTokenSettings | None = None
    prompt: VirtualTokenSettings | None = None
    adapter: AdapterSettings | None = None
    dpo: DpoSettings | None = None
    config_hash: str = ""
    document: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_preference(self) -> bool:
        return self.method in ("dpo", "reward")

    @property
    def uses_padding_free(self) -> bool:
        """Padding-free (packed) batches: samples concatenated, positions reset per sample.

        Virtual-token methods prepend tokens per sample inside PEFT, which a flattened
        row cannot express; reward models pool the last token of each row. Both fall
        back to padded batches (recorded in the model card), whatever ``packing`` says.
        """
        return (
            self.data.packing
            and self.method not in VIRTUAL_TOKEN_METHODS
            and self.method != "reward"
        )


def _mapping(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    dumped = value.model_dump(exclude_none=True) if hasattr(value, "model_dump") else value
    return {str(k): str(v) for k, v in dumped.items() if v}


def from_resolved(job: ResolvedJob) -> JobConfig:
    """Flatten a validated ``ResolvedJob`` into the trainer's :class:`JobConfig`."""
    spec = job.spec
    if spec.method == "ppo":
        raise InvalidConfigError("method ppo is not supported by this trainer version")
    hp = spec.hyperparameters
    data = spec.dataset
    if hp.learning_rate is None or hp.weight_decay is None:
        raise InvalidConfigError(
            "the document is not resolved: learningRate/weightDecay are unset "
            "(the operator must pass kubetune.api.resolve.resolve(job))"
        )
    peft = spec.peft
    lora = peft.lora if peft else None
    quant = peft.quantization if peft else None
    prefix = peft.prefix if peft else None
    prompt = peft.prompt if peft else None
    adapter = peft.adapter if peft else None
    dpo = spec.rlhf.dpo if spec.rlhf else None
    method: Method = spec.method
    if method in ("lora", "qlora") and lora is None:
        raise InvalidConfigError(f"method {method} needs spec.peft.lora")
    if method == "qlora" and quant is None:
        raise InvalidConfigError("method qlora needs spec.peft.quantization")
    return JobConfig(
        name=job.name,
        namespace=job.namespace,
        attempt=job.attempt,
        method=method,
        model=ModelSettings(
            uri=spec.model.uri,
            revision=spec.model.revision,
            dtype=spec.model.dtype,
            trust_remote_code=spec.model.trust_remote_code,
        ),
        data=DataSettings(
            train_uri=data.train,
            eval_uri=data.eval,
            format=data.format,
            field_mapping=_mapping(data.field_mapping),
            eval_split=float(data.eval_split or 0.0),
            max_seq_length=data.max_seq_length,
            packing=bool(data.packing),
            completion_only_loss=data.completion_only_loss,
            skip_invalid_rows=data.skip_invalid_rows,
        ),
        train=TrainSettings(
            learning_rate=hp.learning_rate,
            epochs=hp.epochs,
            max_steps=hp.max_steps,
            global_batch_size=job.derived.global_batch_size,
            micro_batch_size=hp.micro_batch_size,
            gradient_accumulation_steps=job.derived.gradient_accumulation_steps,
            weight_decay=hp.weight_decay,
            warmup_ratio=hp.warmup_ratio,
            scheduler=hp.scheduler,
            seed=hp.seed,
            gradient_checkpointing=hp.gradient_checkpointing,
            precision=hp.precision,
            max_grad_norm=hp.max_grad_norm,
        ),
        distributed=DistributedSettings(
            strategy=spec.distributed.strategy,
            zero_stage=spec.distributed.zero_stage,
            offload=spec.distributed.offload,
            world_size=job.derived.world_size,
            nproc_per_node=job.derived.nproc_per_node,
            nodes=job.derived.nodes,
        ),
        checkpoint=CheckpointSettings(
            interval_steps=spec.checkpoint.interval_steps,
            interval_seconds=spec.checkpoint.interval_seconds,
            keep_last=spec.checkpoint.keep_last,
            resume=spec.checkpoint.resume,
        ),
        output=OutputSettings(uri=spec.output.uri, merge_adapter=spec.output.merge_adapter),
        health=HealthSettings(
            grad_norm_abort_threshold=spec.health.grad_norm_abort_threshold,
            nan_tolerance_steps=spec.health.nan_tolerance_steps,
        ),
        lora=LoraSettings(
            r=lora.r,
            alpha=lora.alpha,
            dropout=lora.dropout,
            target_modules=tuple(lora.target_modules),
            use_dora=lora.use_dora,
        )
        if lora is not None
        else None,
        quantization=QuantizationSettings(
            bits=quant.bits,
            quant_type=quant.quant_type,
            double_quant=quant.double_quant,
            compute_dtype=quant.compute_dtype,
        )
        if quant is not None
        else None,
        prefix=_virtual(prefix),
        prompt=_virtual(prompt),
        adapter=AdapterSettings(
            bottleneck_size=adapter.bottleneck_size,
            non_linearity=adapter.non_linearity,
            scaling=adapter.scaling,
            dropout=adapter.dropout,
        )
        if adapter is not None
        else None,
        dpo=DpoSettings(
            beta=dpo.beta, loss_type=dpo.loss_type, reference_model_uri=dpo.reference_model
        )
        if dpo is not None
        else (DpoSettings() if method == "dpo" else None),
        config_hash=job.config_hash(),
        document=json.loads(job.model_dump_json(by_alias=True)),
    )


def _virtual(value: Any) -> VirtualTokenSettings | None:
    if value is None:
        return None
    return VirtualTokenSettings(
        num_virtual_tokens=value.num_virtual_tokens, init=value.init, init_text=value.init_text
    )


def parse_document(text: str, source: str = "<config>") -> JobConfig:
    """Validate the resolved JSON document with the API and flatten it."""
    try:
        resolved = ResolvedJob.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:10]
        )
        raise InvalidConfigError(f"{source} is not a valid resolved job: {problems}") from exc
    return from_resolved(resolved)


def load_job_config(path: Path) -> JobConfig:
    """Read and validate the document at ``path`` (``KUBETUNE_CONFIG``)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidConfigError(f"cannot read the job document {path}: {exc}") from exc
    return parse_document(text, str(path))


def env_flag(name: str) -> bool:
    """True for 1/true/yes/on (case-insensitive)."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}
