"""One DP-SGD step: Poisson-sampled rows, per-row clipped gradients, Gaussian noise.

Per-row gradients are computed exactly, one backward pass per row
(``torch.autograd.grad`` of that row's mean per-token loss): correct for every layer
type (LoRA linears, embeddings, norms, tied weights) with no per-layer hooks, at the
cost of one backward per row, which suits the small models DP fine-tuning targets.
Each row's gradient g_i (all trainable parameters together) is scaled to
g_i * min(1, C / ||g_i||); the step's gradient is
(sum_i clipped g_i + N(0, sigma^2 C^2 I)) / (q N): the noise is drawn once per step and
the sum is divided by the *expected* batch size, as the accountant's analysis of the
Poisson-subsampled Gaussian mechanism assumes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from kubetune_trainer.data.batching import Batch
from kubetune_trainer.dp.budget import PrivacyPlan
from kubetune_trainer.methods.base import Forward, Method

#: a row's norm is clipped to C / (norm + CLIP_EPS), as Opacus does
CLIP_EPS = 1e-6


def poisson_sample(rows: int, sample_rate: float, seed: int, step: int) -> list[int]:
    """The rows of step ``step``: each independently with probability ``sample_rate``.

    Seeded by (seed, step) only, so a resumed run draws the same rows for the same step."""
    digest = hashlib.sha256(f"kubetune-dp:{seed}:{step}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
    mask = torch.rand(rows, generator=generator) < sample_rate
    return [int(i) for i in torch.nonzero(mask).flatten().tolist()]


@dataclass
class DpStep:
    """What one DP-SGD step saw (for the log and the loss curve)."""

    loss_sum: float
    count: float
    tokens: float
    samples: float
    #: share of the step's rows whose gradient norm exceeded C (they were scaled down)
    clipped_fraction: float
    #: mean per-row gradient norm before clipping
    mean_row_norm: float


def clipped_row_gradients(
    params: list[nn.Parameter],
    forward: Forward,
    model: nn.Module,
    method: Method,
    batches: list[Batch],
    max_grad_norm: float,
) -> tuple[list[torch.Tensor], list[float], float, float]:
    """Sum of the rows' clipped gradients (fp32), each row's norm before clipping, and the
    summed loss and target count over the rows."""
    summed = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    norms: list[float] = []
    loss_sum, count = 0.0, 0.0
    for batch in batches:
        out = method.loss(forward, model, batch)
        n = method.count(batch)
        loss_sum += float(out.loss_sum.detach())
        count += n
        if n <= 0:
            continue
        grads = torch.autograd.grad(out.loss_sum / n, params, allow_unused=True)
        squares = [g.detach().float().pow(2).sum() for g in grads if g is not None]
        norm = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
        norms.append(norm)
        factor = min(1.0, max_grad_norm / (norm + CLIP_EPS))
        for acc, g in zip(summed, grads, strict=True):
            if g is not None:
                acc.add_(g.detach().float(), alpha=factor)
    return summed, norms, loss_sum, count


def dp_sgd_gradients(
    params: list[nn.Parameter],
    forward: Forward,
    model: nn.Module,
    method: Method,
    batches: list[Batch],
    plan: PrivacyPlan,
    generator: torch.Generator | None = None,
) -> DpStep:
    """Set ``p.grad`` of every trainable parameter to the noisy mean clipped gradient."""
    c, sigma = plan.max_grad_norm, plan.noise_multiplier
    summed, norms, loss_sum, count = clipped_row_gradients(
        params, forward, model, method, batches, c
    )
    for p, acc in zip(params, summed, strict=True):
        noise = torch.normal(0.0, sigma * c, size=acc.shape, device=acc.device, generator=generator)
        p.grad = ((acc + noise) / plan.expected_batch_size).to(p.dtype)
    return DpStep(
        loss_sum=loss_sum,
        count=count,
        tokens=float(sum(b.real_tokens for b in batches)),
        samples=float(len(batches)),
        clipped_fraction=sum(n > c for n in norms) / len(norms) if norms else 0.0,
        mean_row_norm=sum(norms) / len(norms) if norms else 0.0,
    )


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


BatchFactory = Callable[[list[int]], Batch]
