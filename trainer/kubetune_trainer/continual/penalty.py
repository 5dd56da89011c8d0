"""The weight-space regularisers of continual learning: EWC and L2-SP.

Both keep the trainable parameters near theta*, their values when training starts:

    l2sp:  strength/2 * sum_i (theta_i - theta*_i)^2
    ewc:   strength/2 * sum_i F_i (theta_i - theta*_i)^2

F is the diagonal *empirical* Fisher information of the protected tasks at theta*: the
mean over N protected rows of the squared gradient of each row's mean per-token NLL
(the observed targets, not sampled ones). Rows are sharded over the ranks and the sums
all-reduced, so 1 and N processes estimate the same F. Only trainable parameters are
regularised: with LoRA (or any adapter) theta* is the adapter's initial value, so the
penalty measures how far the adapter has moved the base model.

theta* and F are saved in every checkpoint (``continual.safetensors``) rather than
recomputed: after a resume the weights are no longer theta*, so F could not be
re-estimated at the right point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from kubetune_trainer.errors import InvalidConfigError

STATE_FILE = "continual.safetensors"
Reduce = Callable[[list[torch.Tensor]], None]


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters the optimizer updates, by name (the ones regularised)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def estimate_fisher(
    params: dict[str, nn.Parameter],
    losses: Iterable[torch.Tensor],
    total: int,
    reduce: Reduce | None = None,
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: mean of squared per-row gradients over ``total`` rows
    (this rank's rows' losses in ``losses``; ``reduce`` sums the tensors over the gang)."""
    names = list(params)
    tensors = [params[n] for n in names]
    sums = [torch.zeros_like(p, dtype=torch.float32) for p in tensors]
    for loss in losses:
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        for acc, grad in zip(sums, grads, strict=True):
            if grad is not None:
                acc.add_(grad.detach().float().square())
    if reduce is not None:
        reduce(sums)
    return {n: s / max(total, 1) for n, s in zip(names, sums, strict=True)}


def quadratic_penalty(
    params: dict[str, nn.Parameter],
    start: dict[str, torch.Tensor],
    strength: float,
    fisher: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """strength/2 * sum_i w_i (theta_i - theta*_i)^2, w = F (ewc) or 1 (l2sp); differentiable."""
    total: torch.Tensor | None = None
    for name, param in params.items():
        diff = param.float() - start[name]
        term = (diff.square() if fisher is None else fisher[name] * diff.square()).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return 0.5 * strength * total


@dataclass
class Anchor:
    """theta* (and F for ewc) of the trainable parameters, on the training device."""

    kind: Literal["ewc", "l2sp"]
    strength: float
    start: dict[str, torch.Tensor]
    fisher: dict[str, torch.Tensor] | None = None

    @classmethod
    def snapshot(
        cls, kind: Literal["ewc", "l2sp"], strength: float, params: dict[str, nn.Parameter]
    ) -> Anchor:
        start = {n: p.detach().float().clone() for n, p in params.items()}
        return cls(kind, strength, start)

    def penalty(self, params: dict[str, nn.Parameter]) -> torch.Tensor:
        fisher = self.fisher if self.kind == "ewc" else None
        return quadratic_penalty(params, self.start, self.strength, fisher)

    def fisher_summary(self) -> dict[str, float]:
        """Mean and max of F (how much protection the estimate gives, for the card)."""
        if not self.fisher:
            return {}
        flat = torch.cat([f.flatten() for f in self.fisher.values()])
        return {"fisherMean": float(flat.mean()), "fisherMax": float(flat.max())}

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        tensors = {f"start.{n}": t.detach().cpu().contiguous() for n, t in self.start.items()}
        for name, value in (self.fisher or {}).items():
            tensors[f"fisher.{name}"] = value.detach().cpu().contiguous()
        save_file(tensors, str(directory / STATE_FILE), metadata={"kind": self.kind})

    def load(self, directory: Path, device: torch.device) -> None:
        """Replace theta* and F with a checkpoint's (every rank, on resume)."""
        from safetensors import safe_open

        path = directory / STATE_FILE
        if not path.exists():
            raise InvalidConfigError(
                f"checkpoint {directory} has no {STATE_FILE}: it was not written by a job with "
                "continual.regularizer; use checkpoint.resume: never to start over"
            )
        start: dict[str, torch.Tensor] = {}
        fisher: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                part, _, name = key.partition(".")
                (start if part == "start" else fisher)[name] = handle.get_tensor(key).to(device)
        if set(start) != set(self.start):
            raise InvalidConfigError(
                f"checkpoint {directory}: the regularised parameters differ from this model's; "
                "was the method or model changed? Use checkpoint.resume: never."
            )
        self.start = start
        self.fisher = fisher or None
