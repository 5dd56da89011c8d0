"""The training settings the estimate depends on, read from a resolved FineTuneJob.

A flat, frozen record so the advice can change one setting at a time
(``dataclasses.replace``) and estimate again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kubetune.api.methods import METHOD_TRAITS
from kubetune.api.resolve import ResolvedJob

Precision = Literal["bf16", "fp16", "fp32"]
Strategy = Literal["ddp", "fsdp", "deepspeed"]
Offload = Literal["none", "optimizer", "all"]


@dataclass(frozen=True)
class TrainingSetup:
    method: str
    precision: Precision
    strategy: Strategy
    zero_stage: int  # 0 for ddp and fsdp
    offload: Offload
    world_size: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    max_seq_length: int
    gradient_checkpointing: bool
    #: the trained policy is a LoRA adapter (methods lora/qlora, or peft.lora on dpo/ppo/...)
    lora_rank: int = 0
    lora_targets: tuple[str, ...] = ("all-linear",)
    lora_dropout: float = 0.0
    quantized_bits: int = 0  # qlora: 4 or 8
    adapter_bottleneck: int = 0
    virtual_tokens: int = 0
    #: online RL: sequences generated per prompt and new tokens each
    samples_per_prompt: int = 1
    max_new_tokens: int = 0
    verifiable_reward: bool = False
    padded: bool = False  # batches padded to the longest row (not padding-free)
    #: bytes per weight when spec.model.dtype is explicit; 0: the trainer's rule (auto)
    weight_bytes: int = 0
    #: where it runs: "cuda" (what the plan is for) or "cpu" (the estimator's own check)
    device: str = "cuda"

    @property
    def dropout_mask_bytes(self) -> int:
        """CUDA's fused dropout keeps a 1-byte mask; the CPU path keeps its scaled noise."""
        return 1 if self.device == "cuda" else self.compute_bytes

    @property
    def family(self) -> str:
        return METHOD_TRAITS[self.method].family

    @property
    def frozen_base(self) -> bool:
        """The base weights do not train (PEFT methods and LoRA policies)."""
        return self.family == "peft" or (self.lora_rank > 0 and self.method not in ("full",))

    @property
    def compute_bytes(self) -> int:
        return 4 if self.precision == "fp32" else 2

    @property
    def sequences_per_micro_batch(self) -> int:
        """Sequences one forward pass sees: pairs count twice (chosen and rejected)."""
        pairs = self.method in ("dpo", "orpo", "reward")
        return self.micro_batch_size * (2 if pairs else 1) * max(1, self.samples_per_prompt)

    @property
    def tokens_per_sequence(self) -> int:
        prompt = self.virtual_tokens if self.method == "prompt" else 0
        return self.max_seq_length + prompt + self.max_new_tokens

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.sequences_per_micro_batch * self.tokens_per_sequence

    def describe(self) -> str:
        parallel = {
            "ddp": "DDP",
            "fsdp": "FSDP",
            "deepspeed": f"DeepSpeed ZeRO-{self.zero_stage}",
        }[self.strategy]
        offload = f", offload {self.offload}" if self.offload != "none" else ""
        lora = f" r={self.lora_rank}" if self.lora_rank else ""
        ckpt = "on" if self.gradient_checkpointing else "off"
        return (
            f"{self.method}{lora}, {self.precision}, {parallel}{offload} on {self.world_size} "
            f"GPU{'s' * (self.world_size != 1)}, micro-batch {self.micro_batch_size} x "
            f"{self.max_seq_length} tokens (x{self.gradient_accumulation_steps} accumulation), "
            f"gradient checkpointing {ckpt}"
        )


def resolve_precision(requested: str, bf16_supported: bool) -> Precision:
    """``auto`` as the trainer resolves it on a GPU: bf16 where supported, else fp16."""
    if requested == "auto":
        return "bf16" if bf16_supported else "fp16"
    return requested  # type: ignore[return-value]


def setup_from_job(job: ResolvedJob, *, bf16_supported: bool = True) -> TrainingSetup:
    spec, hp = job.spec, job.spec.hyperparameters
    peft, rlhf = spec.peft, spec.rlhf
    traits = METHOD_TRAITS[spec.method]
    lora = peft.lora if peft and (spec.method in ("lora", "qlora") or traits.lora_option) else None
    generation = rlhf.generation if rlhf and traits.online else None
    virtual = peft.prefix or peft.prompt if peft else None
    return TrainingSetup(
        method=spec.method,
        precision=resolve_precision(hp.precision, bf16_supported),
        strategy=spec.distributed.strategy,
        zero_stage=spec.distributed.zero_stage or 0
        if spec.distributed.strategy == "deepspeed"
        else 0,
        offload=spec.distributed.offload,
        world_size=job.derived.world_size,
        micro_batch_size=hp.micro_batch_size,
        gradient_accumulation_steps=job.derived.gradient_accumulation_steps,
        max_seq_length=spec.dataset.max_seq_length,
        gradient_checkpointing=hp.gradient_checkpointing,
        lora_rank=lora.r if lora else 0,
        lora_targets=tuple(lora.target_modules) if lora else ("all-linear",),
        lora_dropout=lora.dropout if lora else 0.0,
        quantized_bits=(peft.quantization.bits if peft and peft.quantization else 4)
        if spec.method == "qlora"
        else 0,
        adapter_bottleneck=peft.adapter.bottleneck_size if peft and peft.adapter else 0,
        virtual_tokens=virtual.num_virtual_tokens if virtual else 0,
        samples_per_prompt=(generation.samples_per_prompt or 1) if generation else 1,
        max_new_tokens=generation.max_new_tokens if generation else 0,
        verifiable_reward=bool(rlhf and rlhf.reward and rlhf.reward.verifiable),
        padded=not (spec.dataset.packing and traits.packs),
        weight_bytes={"auto": 0, "float32": 4}.get(spec.model.dtype, 2),
    )
