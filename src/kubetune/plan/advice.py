"""Does the estimate fit the GPU, and what to change when it does not.

Usable memory is the product's total less 1 GiB (CUDA context, cuBLAS workspace, NCCL
buffers); an estimate above 90% of that is "tight" (the caching allocator fragments),
above 100% it does not fit. The suggestions come in the order of their cost to the
job: gradient checkpointing (about a third more compute), a smaller micro-batch with
more gradient accumulation (same global batch, same result), LoRA or QLoRA (a
different method), ZeRO-3/FSDP sharding, then more GPUs. The first two accumulate;
the later ones are applied on top of them. Each comes with its own estimate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from kubetune.plan.gpus import GIB, GPUS, GpuType
from kubetune.plan.memory import MemoryEstimate, estimate_memory
from kubetune.plan.setup import TrainingSetup
from kubetune.plan.shape import ModelShape

RESERVED_BYTES = GIB
TIGHT_FRACTION = 0.9
MAX_GPUS = 1024

Fit = Literal["fits", "tight", "does not fit"]


def usable_bytes(gpu: GpuType) -> int:
    return max(0, gpu.memory_bytes - RESERVED_BYTES)


def fit(peak_bytes: int, gpu: GpuType) -> Fit:
    usable = usable_bytes(gpu)
    if peak_bytes <= TIGHT_FRACTION * usable:
        return "fits"
    return "tight" if peak_bytes <= usable else "does not fit"


@dataclass(frozen=True)
class Suggestion:
    change: str
    setup: TrainingSetup
    estimate: MemoryEstimate
    fit: Fit


def smallest_fitting_gpu(shape: ModelShape, setup: TrainingSetup) -> GpuType | None:
    peak = estimate_memory(shape, setup).peak_bytes
    for gpu in sorted((g for _, g in GPUS), key=lambda g: g.memory_bytes):
        if fit(peak, gpu) == "fits":
            return gpu
    return None


def suggest(
    shape: ModelShape, setup: TrainingSetup, gpu: GpuType, *, loss_token_fraction: float = 1.0
) -> list[Suggestion]:
    """What to change, in order, when ``setup`` does not comfortably fit ``gpu``."""

    def try_(change: str, candidate: TrainingSetup) -> Suggestion:
        est = estimate_memory(shape, candidate, loss_token_fraction=loss_token_fraction)
        return Suggestion(change, candidate, est, fit(est.peak_bytes, gpu))

    current = estimate_memory(shape, setup, loss_token_fraction=loss_token_fraction)
    if fit(current.peak_bytes, gpu) == "fits":
        return []
    out: list[Suggestion] = []
    cheap = setup
    if not setup.gradient_checkpointing:
        cheap = replace(cheap, gradient_checkpointing=True)
        out.append(try_("enable hyperparameters.gradientCheckpointing", cheap))
    if out and out[-1].fit == "fits":
        return out
    micro = cheap.micro_batch_size
    while micro > 1:
        micro //= 2
        candidate = replace(
            cheap,
            micro_batch_size=micro,
            gradient_accumulation_steps=cheap.gradient_accumulation_steps
            * cheap.micro_batch_size
            // micro,
        )
        if fit(estimate_memory(shape, candidate).peak_bytes, gpu) == "fits" or micro == 1:
            break
    if micro < cheap.micro_batch_size:
        accumulation = cheap.gradient_accumulation_steps * cheap.micro_batch_size // micro
        cheap = replace(cheap, micro_batch_size=micro, gradient_accumulation_steps=accumulation)
        out.append(
            try_(
                f"microBatchSize {micro} (gradient accumulation {accumulation}, same global batch)",
                cheap,
            )
        )
        if out[-1].fit == "fits":
            return out
    if not cheap.frozen_base and cheap.method in (
        "full",
        "dpo",
        "kto",
        "orpo",
        "ppo",
        "grpo",
        "rloo",
    ):
        lora_method = "lora" if cheap.method == "full" else cheap.method
        lora = replace(cheap, method=lora_method, lora_rank=16, lora_dropout=0.05)
        out.append(try_(_lora_text(cheap.method), lora))
        if cheap.method == "full" and out[-1].fit != "fits":
            qlora = replace(lora, method="qlora", quantized_bits=4)
            out.append(try_("method qlora (4-bit base, LoRA r=16)", qlora))
    if cheap.world_size > 1 and not (cheap.strategy == "fsdp" or cheap.zero_stage == 3):
        sharded = _sharded(cheap)
        out.append(try_(_shard_text(cheap), sharded))
    more = _more_gpus(shape, _sharded(cheap), gpu)
    if more is not None and more.world_size > cheap.world_size:
        out.append(
            try_(
                f"{more.world_size} GPUs with {_shard_text(cheap)} (globalBatchSize must stay "
                f"a multiple of microBatchSize x {more.world_size})",
                more,
            )
        )
    return out


def _lora_text(method: str) -> str:
    if method == "full":
        return "method lora (r=16, all-linear): only the adapter trains"
    return "a LoRA policy (peft.lora r=16): the base doubles as the reference"


def _sharded(setup: TrainingSetup) -> TrainingSetup:
    if setup.strategy == "deepspeed":
        return replace(setup, zero_stage=3)
    return replace(setup, strategy="fsdp", zero_stage=0)


def _shard_text(setup: TrainingSetup) -> str:
    if setup.strategy == "deepspeed":
        return "distributed.zeroStage 3 (shard weights too)"
    return "distributed.strategy fsdp (shard weights, gradients and optimizer state)"


def _more_gpus(shape: ModelShape, setup: TrainingSetup, gpu: GpuType) -> TrainingSetup | None:
    """The fewest GPUs (doubling) at which the sharded ``setup`` fits, if any."""
    world = max(2, setup.world_size)
    while world <= MAX_GPUS:
        candidate = replace(setup, world_size=world)
        if fit(estimate_memory(shape, candidate).peak_bytes, gpu) == "fits":
            return candidate
        world *= 2
    return None
