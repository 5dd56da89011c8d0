"""Time per epoch from a stated throughput: given tokens/s, or MFU x the GPU's peak.

Training FLOPs per token follow Kaplan et al. (2020) and PaLM (Chowdhery et al., 2022):
``6·N`` for the matmuls of a forward and backward pass over trained weights (2 forward,
4 backward), ``4·N`` when the base is frozen (no weight gradients, but the input
gradients still flow through it), ``+2·N`` with gradient checkpointing (one more
forward), and causal attention ``6·L·q_dim·s`` scaled the same way (half of PaLM's
``12·L·h·s``: the causal mask skips half the scores). A mixture of experts counts the
parameters a token visits. The throughput is an assumption unless measured: say so.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetune.plan.gpus import GpuType
from kubetune.plan.setup import TrainingSetup
from kubetune.plan.shape import ModelShape

#: assumed model-FLOPs utilisation of bf16 fine-tuning with a memory-efficient attention
#: kernel when nothing is measured (large dense models reach 0.4-0.5, small ones less)
DEFAULT_MFU = 0.35


@dataclass(frozen=True)
class Throughput:
    tokens_per_second_per_gpu: float
    how: str
    assumed: bool


def active_parameters(shape: ModelShape) -> int:
    """Parameters one token's forward pass multiplies with (all of a dense model)."""
    if not shape.num_experts:
        return shape.parameters
    unused = shape.num_experts - shape.experts_per_token
    skipped = shape.mlp_matrices * shape.hidden_size * shape.expert_intermediate_size * unused
    return shape.parameters - shape.num_layers * skipped


def flops_per_token(shape: ModelShape, setup: TrainingSetup) -> float:
    """Training FLOPs per token of the trained sequences (forward + backward)."""
    frozen = setup.frozen_base or setup.method in ("adapter", "prefix", "prompt")
    passes = (4.0 if frozen else 6.0) + (2.0 if setup.gradient_checkpointing else 0.0)
    attention = shape.num_layers * shape.q_dim * setup.tokens_per_sequence
    return passes * (active_parameters(shape) + attention)


def throughput(
    shape: ModelShape,
    setup: TrainingSetup,
    gpu: GpuType | None,
    *,
    tokens_per_second: float | None = None,
    mfu: float | None = None,
) -> Throughput | None:
    """Tokens/s per GPU: as given, else MFU (default :data:`DEFAULT_MFU`) x peak FLOP/s."""
    if tokens_per_second is not None:
        return Throughput(tokens_per_second, "given (--tokens-per-second)", assumed=False)
    if gpu is None or not gpu.peak_flops:
        return None
    util = DEFAULT_MFU if mfu is None else mfu
    per_token = flops_per_token(shape, setup)
    rate = util * gpu.peak_flops / per_token
    source = "given" if mfu is not None else "assumed"
    return Throughput(
        rate,
        f"{source} MFU {util:g} x {gpu.name} {gpu.peak_flops / 1e12:g} TFLOP/s / "
        f"{per_token / 1e9:.3g} GFLOP per token",
        assumed=mfu is None,
    )
