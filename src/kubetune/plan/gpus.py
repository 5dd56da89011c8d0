"""GPU products the plan knows: memory, peak dense 16-bit FLOP/s, bf16 support.

Memory is what ``nvidia-smi`` reports as total (MiB); peak FLOP/s are the datasheets'
dense tensor-core figures (no sparsity) for bf16, or fp16 where the GPU has no bf16.
A job names its GPU through ``resources.nodeSelector`` with the labels GPU feature
discovery sets (``nvidia.com/gpu.product``, ``nvidia.com/gpu.memory``) or the cloud's
(``cloud.google.com/gke-accelerator``); ``kubetune plan --gpu`` overrides it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

MIB = 2**20
GIB = 2**30

PRODUCT_LABELS = ("nvidia.com/gpu.product", "cloud.google.com/gke-accelerator")
MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB, set by GPU feature discovery


@dataclass(frozen=True)
class GpuType:
    name: str
    memory_bytes: int
    peak_flops: float  # dense bf16 (fp16 where no bf16), per GPU
    bf16: bool = True

    def describe(self) -> str:
        return f"{self.name} ({self.memory_bytes / GIB:.0f} GiB)"


# Order matters for matching: more specific patterns first ("a100...80" before "a100").
GPUS: tuple[tuple[str, GpuType], ...] = (
    ("h200", GpuType("H200", 143_771 * MIB, 989e12)),
    ("h100", GpuType("H100-80GB", 81_559 * MIB, 989e12)),
    ("a100.*80", GpuType("A100-80GB", 81_920 * MIB, 312e12)),
    ("a100", GpuType("A100-40GB", 40_960 * MIB, 312e12)),
    ("l40s", GpuType("L40S", 46_068 * MIB, 362e12)),
    ("a10g", GpuType("A10G", 23_028 * MIB, 70e12)),
    ("l4", GpuType("L4", 23_034 * MIB, 121e12)),
    ("t4", GpuType("T4", 15_360 * MIB, 65e12, bf16=False)),
    ("v100.*32", GpuType("V100-32GB", 32_768 * MIB, 125e12, bf16=False)),
    ("v100", GpuType("V100-16GB", 16_384 * MIB, 125e12, bf16=False)),
)
#: the names --gpu accepts, smallest memory first (the advice looks for the smallest fit)
GPU_NAMES = tuple(g.name for _, g in sorted(GPUS, key=lambda item: item[1].memory_bytes))


def _normal(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower())


def gpu_by_name(name: str) -> GpuType | None:
    """``H100``, ``a100-80gb``, ``NVIDIA-A100-SXM4-40GB``, ``nvidia-l4``: the known product."""
    text = _normal(name)
    for pattern, gpu in GPUS:
        if re.search(rf"(^|-){pattern}(-|$)" if pattern in ("l4", "t4") else pattern, text):
            return gpu
    return None


def gpu_from_selector(selector: Mapping[str, str]) -> GpuType | None:
    """The GPU a job's nodeSelector pins, if any; ``nvidia.com/gpu.memory`` wins for memory."""
    gpu = next(
        (
            g
            for label in PRODUCT_LABELS
            if label in selector
            for g in [gpu_by_name(selector[label])]
        ),
        None,
    )
    memory = selector.get(MEMORY_LABEL)
    if memory and memory.isdigit():
        base = gpu or GpuType(f"GPU with {int(memory) // 1024} GiB", 0, 0.0)
        return GpuType(base.name, int(memory) * MIB, base.peak_flops, base.bf16)
    return gpu
