"""Fits or not, and the ordered advice with an estimate after each step."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kubetune.plan import ModelShape, TrainingSetup, estimate_memory, gpu_by_name
from kubetune.plan.advice import fit, suggest, usable_bytes
from kubetune.plan.gpus import GIB, gpu_from_selector

LLAMA_8B = ModelShape.from_file(Path(__file__).parent / "configs" / "llama-3.1-8b.json")
FULL_8B = TrainingSetup(
    method="full",
    precision="bf16",
    strategy="ddp",
    zero_stage=0,
    offload="none",
    world_size=1,
    micro_batch_size=8,
    gradient_accumulation_steps=8,
    max_seq_length=2048,
    gradient_checkpointing=False,
)


def test_gpu_products_from_labels_and_names() -> None:
    assert gpu_by_name("NVIDIA-A100-SXM4-80GB").name == "A100-80GB"  # type: ignore[union-attr]
    assert gpu_by_name("NVIDIA-A100-PCIE-40GB").name == "A100-40GB"  # type: ignore[union-attr]
    assert gpu_by_name("nvidia-tesla-t4").name == "T4"  # type: ignore[union-attr]
    assert gpu_by_name("NVIDIA-L4").name == "L4"  # type: ignore[union-attr]
    assert gpu_by_name("NVIDIA-L40S").name == "L40S", "L40S is not an L4"  # type: ignore[union-attr]
    assert gpu_by_name("NVIDIA-H200").memory_bytes == 143_771 * 2**20  # type: ignore[union-attr]
    assert gpu_by_name("quantum-accelerator") is None
    gke = gpu_from_selector({"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"})
    assert gke is not None and gke.name == "H100-80GB"
    gfd = gpu_from_selector(
        {"nvidia.com/gpu.product": "NVIDIA-A10G", "nvidia.com/gpu.memory": "24576"}
    )
    assert gfd is not None and gfd.name == "A10G" and gfd.memory_bytes == 24 * GIB
    assert gpu_from_selector({"kubetune.io/node-pool": "gpu"}) is None


def test_verdict_thresholds() -> None:
    h100 = gpu_by_name("H100")
    assert h100 is not None
    usable = usable_bytes(h100)
    assert fit(int(0.9 * usable), h100) == "fits"
    assert fit(int(0.95 * usable), h100) == "tight"
    assert fit(usable + 1, h100) == "does not fit"


def test_full_8b_on_one_h100_does_not_fit_and_the_advice_is_ordered() -> None:
    h100 = gpu_by_name("H100")
    assert h100 is not None
    assert fit(estimate_memory(LLAMA_8B, FULL_8B).peak_bytes, h100) == "does not fit"
    advice = suggest(LLAMA_8B, FULL_8B, h100)
    changes = [s.change for s in advice]
    assert changes[0].startswith("enable hyperparameters.gradientCheckpointing")
    assert changes[1].startswith("microBatchSize 1 (gradient accumulation 64")
    assert changes[2].startswith("method lora")
    assert advice[2].fit == "fits", "LoRA on a bf16 base fits one H100"
    # 16 bytes x 8B parameters = 120 GiB of states: only sharding over more GPUs keeps full
    more = advice[-1]
    assert more.setup.strategy == "fsdp" and more.setup.method == "full"
    assert more.fit == "fits" and more.setup.world_size == 2  # 16 x 8.03B / 2 = 59.8 GiB
    peaks = [s.estimate.peak_bytes for s in advice[:2]]
    assert peaks == sorted(peaks, reverse=True), "each cheap step lowers the estimate"


def test_a_job_that_fits_gets_no_advice() -> None:
    h200 = gpu_by_name("H200")
    assert h200 is not None
    lora = replace(FULL_8B, method="lora", lora_rank=16, micro_batch_size=1)
    assert fit(estimate_memory(LLAMA_8B, lora).peak_bytes, h200) == "fits"
    assert suggest(LLAMA_8B, lora, h200) == []


def test_sharding_is_suggested_before_more_gpus_when_the_gang_has_several() -> None:
    a100 = gpu_by_name("A100-40GB")
    assert a100 is not None
    eight = replace(FULL_8B, world_size=8, gradient_checkpointing=True, micro_batch_size=1)
    changes = [s.change for s in suggest(LLAMA_8B, eight, a100)]
    assert any("distributed.strategy fsdp" in c for c in changes)
    sharded = next(s for s in suggest(LLAMA_8B, eight, a100) if s.change.startswith("distributed"))
    assert sharded.fit == "fits" and sharded.setup.world_size == 8
