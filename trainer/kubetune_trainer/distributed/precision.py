"""Mixed precision: resolve ``precision: auto`` and provide the autocast context.

``auto`` means bf16 on GPUs that support it and fp32 elsewhere (CPU bf16 autocast is
supported but rarely faster, so it is used only when asked for explicitly). fp16 needs
a CUDA GradScaler and is refused on CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

from kubetune_trainer.errors import UnsupportedError

Resolved = Literal["bf16", "fp16", "fp32"]


def resolve_precision(requested: str, device: torch.device) -> Resolved:
    if requested == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise UnsupportedError("precision fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UnsupportedError("precision bf16 is not supported by this GPU; use fp16")
    return requested  # type: ignore[return-value]


def compute_dtype(precision: Resolved) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


@contextlib.contextmanager
def autocast(precision: Resolved, device: torch.device, enabled: bool = True) -> Iterator[None]:
    """Autocast for engines that keep fp32 weights (plain, DDP); no-op for fp32."""
    dtype = compute_dtype(precision)
    if dtype is None or not enabled:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
