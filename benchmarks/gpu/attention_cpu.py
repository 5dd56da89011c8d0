"""Why padding-free batches keep per-sample SDPA on CPU (and FlexAttention on GPUs).

One packed row of 8 samples (T = 2000), 8 query / 2 KV heads of 64, forward only, one
torch thread, process CPU time per forward (robust on a shared machine):
per-sample causal SDPA, FlexAttention (eager: its only CPU mode with autograd off) and
SDPA with the dense document-causal mask transformers would build.

    PYTHONPATH=src:trainer python benchmarks/gpu/attention_cpu.py
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_mask

from kubetune_trainer.models import varlen_attention as va


def cpu_ms(fn: Callable[[], torch.Tensor], repeats: int = 5) -> float:
    fn()
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats * 1e3


def main() -> None:
    warnings.filterwarnings("ignore")  # flex warns that it runs uncompiled
    torch.set_num_threads(1)
    torch.manual_seed(0)
    layout = va.PackedLayout([400, 120, 700, 50, 300, 230, 90, 110])
    t = layout.total
    q, k, v = torch.randn(1, 8, t, 64), torch.randn(1, 2, t, 64), torch.randn(1, 2, t, 64)
    mask = create_mask(va.document_causal_mask_mod(layout.document_ids()), 1, 1, t, t, "cpu")
    variants: dict[str, Callable[[], torch.Tensor]] = {
        "per-sample SDPA": lambda: va.per_sample_sdpa(q, k, v, layout),
        "FlexAttention (eager)": lambda: va.flex_varlen(q, k, v, layout),
        "SDPA + dense block mask": lambda: F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, enable_gqa=True
        ),
    }
    with torch.no_grad():
        for name, fn in variants.items():
            print(f"{name}: {cpu_ms(fn):.1f} ms CPU per forward")


if __name__ == "__main__":
    main()
