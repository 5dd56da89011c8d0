"""Which MoE weights may change: a frozen router, expert-specialised fine-tuning.

Freezing is ``requires_grad=False``. Selecting experts inside a fused ``[E, out, in]``
tensor cannot be: the tensor is one parameter. Its gradient is multiplied by a 0/1 mask
over the expert dimension (a tensor hook, before any all-reduce or clipping), so Adam's
moments of the other experts stay zero and their update is zero, and because AdamW's
decoupled weight decay would still shrink them, the rows are put back after every
optimizer step (pre/post step hooks). Not-fused experts (a ``ModuleList``) are frozen
one module at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kubetune_trainer.moe.layout import MoeLayout


def freeze_router(layout: MoeLayout) -> int:
    """Freeze every router; returns the number of parameters frozen."""
    frozen = 0
    for param in layout.router_parameters():
        if param.requires_grad:
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


class ExpertSelection:
    """Only ``experts`` of every MoE layer train; everything else keeps its base value."""

    def __init__(self, model: nn.Module, layout: MoeLayout, experts: Sequence[int]) -> None:
        self.experts = sorted(set(experts))
        e = layout.num_experts
        keep = torch.zeros(e, dtype=torch.bool)
        keep[self.experts] = True
        self.frozen_rows = ~keep  # experts whose rows never change
        #: fused tensors whose rows are masked, with their [E] row mask
        self.masked: list[nn.Parameter] = []
        trainable: set[int] = set()
        for layer in layout.layers:
            for param in layer.fused_parameters(e).values():
                self.masked.append(param)
                trainable.add(id(param))
            for index, expert in enumerate(layer.expert_modules()):
                if keep[index]:
                    trainable.update(id(p) for p in expert.parameters())
        for param in model.parameters():
            if id(param) not in trainable:
                param.requires_grad_(False)
        for param in self.masked:
            param.requires_grad_(True)
            mask = keep.to(param.device, param.dtype).reshape(-1, 1, 1)
            param.register_hook(lambda grad, mask=mask: grad * mask.to(grad.dtype))
        self._saved: list[torch.Tensor] = []

    def trainable_parameters(self, model: nn.Module) -> int:
        """Weights that can change: the selected experts' rows, not whole fused tensors."""
        rows = len(self.experts)
        total = 0
        masked = {id(p) for p in self.masked}
        for param in model.parameters():
            if not param.requires_grad:
                continue
            total += param[0].numel() * rows if id(param) in masked else param.numel()
        return total

    def bind(self, optimizer: torch.optim.Optimizer) -> None:
        """Undo whatever the optimizer step does to the frozen rows (weight decay)."""
        optimizer.register_step_pre_hook(self._before)
        optimizer.register_step_post_hook(self._after)

    def _before(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._saved = [p.detach()[self.frozen_rows.to(p.device)].clone() for p in self.masked]

    def _after(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            for param, rows in zip(self.masked, self._saved, strict=True):
                param[self.frozen_rows.to(param.device)] = rows
        self._saved = []
