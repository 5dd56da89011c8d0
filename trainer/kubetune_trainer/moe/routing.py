"""Router logits of the training forward passes: load-balancing loss and balance statistics.

Forward hooks on every router record its logits while the loop computes a micro-batch's
loss (``capture``), whatever forward the method runs (one for SFT, chosen and rejected
for DPO, the KL batch of KTO). Only grad-enabled calls inside the window count: the
evaluation, a reference pass under ``no_grad`` and the recomputation of gradient
checkpointing (which runs during backward, after the window) are not training routing.
A pre-hook on the model keeps the call's ``attention_mask`` so padding never counts.

The auxiliary loss is transformers' own ``load_balancing_loss_func`` (Switch Transformer,
as the MoE models compute it with ``output_router_logits=True``); the statistics are the
share of top-k assignments each expert received (sums to 1 per layer) and the mean
entropy of the router's distribution (0 = always the same expert, ln E = uniform).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kubetune_trainer.models.varlen_attention import LAYOUT_KWARG, PackedLayout
from kubetune_trainer.moe.layout import MoeLayout


@dataclass
class RoutingStats:
    """Expert load of one optimizer step (all ranks), per MoE layer."""

    layers: list[int]
    #: [layer][expert]: share of the layer's top-k assignments that went to the expert
    token_share: list[list[float]]
    #: [layer]: mean entropy (nats) of the router's softmax over experts
    entropy: list[float]
    aux_loss: float | None

    @property
    def mean_share(self) -> list[float]:
        """Per-expert share averaged over the layers (sums to 1)."""
        n = len(self.token_share)
        return [sum(col) / n for col in zip(*self.token_share, strict=True)]

    def log_fields(self) -> dict[str, Any]:
        """The train-log fields (``moe/...``), small enough for every step."""
        fields: dict[str, Any] = {
            "moe/expertTokenShare": [round(v, 6) for v in self.mean_share],
            "moe/maxExpertTokenShare": [round(max(row), 6) for row in self.token_share],
            "moe/routingEntropy": [round(v, 6) for v in self.entropy],
        }
        if self.aux_loss is not None:
            fields["moe/auxLoss"] = self.aux_loss
        return fields


class RoutingRecorder:
    """Hooks on the routers of ``layout``; ``capture`` opens the recording window."""

    def __init__(self, model: nn.Module, layout: MoeLayout) -> None:
        self.layout = layout
        self.num_layers = len(layout.layers)
        self._window = False
        self._mask: torch.Tensor | None = None
        self._logits: list[list[torch.Tensor]] = [[] for _ in layout.layers]
        self._masks: list[list[torch.Tensor | None]] = [[] for _ in layout.layers]
        self._reset_totals()
        self._handles = [
            layer.router.register_forward_hook(self._hook(i))
            for i, layer in enumerate(layout.layers)
        ]
        self._handles.append(model.register_forward_pre_hook(self._pre_hook, with_kwargs=True))

    def _reset_totals(self) -> None:
        e = self.layout.num_experts
        self._counts = torch.zeros(self.num_layers, e, dtype=torch.float64)
        self._entropy = torch.zeros(self.num_layers, dtype=torch.float64)
        self._rows = torch.zeros(self.num_layers, dtype=torch.float64)
        self._aux_sum = 0.0
        self._aux_weight = 0.0

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()

    # -- hooks --------------------------------------------------------------------
    def _pre_hook(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        if self._window:
            mask = kwargs.get("attention_mask")
            layout = kwargs.get(LAYOUT_KWARG)
            if mask is None and isinstance(layout, PackedLayout) and layout.padding:
                mask = layout.token_mask()  # a packed row's rounding segment
            self._mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def _hook(self, index: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not (self._window and torch.is_grad_enabled()):
                return
            logits = output[0] if isinstance(output, tuple) else output
            logits = logits.reshape(-1, logits.shape[-1])
            mask = self._mask
            if mask is not None and mask.numel() != logits.shape[0]:
                mask = None
            self._logits[index].append(logits)
            self._masks[index].append(mask)

        return hook

    # -- window -------------------------------------------------------------------
    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Record the routing of the forwards inside (one micro-batch's loss)."""
        self._window = True
        try:
            yield
        finally:
            self._window = False
            self._mask = None

    def take_aux_loss(self, weight: float) -> torch.Tensor | None:
        """The load-balancing loss of the captured forwards (with grad), and fold the
        window's routing into the step's statistics (``weight``: the micro-batch's count,
        which weighs its aux loss in the step's mean)."""
        if not any(self._logits):
            return None
        from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

        e, k = self.layout.num_experts, self.layout.top_k
        layer_logits, flat_mask = [], []
        for index in range(self.num_layers):
            parts = self._logits[index]
            masks = self._masks[index]
            logits = torch.cat(parts) if len(parts) > 1 else parts[0]
            valid = [
                m.reshape(-1).to(logits.device, torch.float32)
                if m is not None
                else torch.ones(p.shape[0], device=logits.device)
                for p, m in zip(parts, masks, strict=True)
            ]
            mask = torch.cat(valid)
            layer_logits.append(logits)
            flat_mask.append(mask)
            self._accumulate(index, logits.detach(), mask)
        self._logits = [[] for _ in self.layout.layers]
        self._masks = [[] for _ in self.layout.layers]
        # padding never counts: drop the masked rows of every layer before the library's loss
        kept: Any = tuple(
            x if bool(m.all()) else x[m.bool()]
            for x, m in zip(layer_logits, flat_mask, strict=True)
        )
        aux = load_balancing_loss_func(kept, e, k, None)
        if not isinstance(aux, torch.Tensor):
            return None
        self._aux_sum += float(aux.detach()) * weight
        self._aux_weight += weight
        return aux

    def _accumulate(self, index: int, logits: torch.Tensor, mask: torch.Tensor) -> None:
        probs = torch.softmax(logits.float(), dim=-1)
        keep = mask > 0
        probs = probs[keep]
        chosen = torch.topk(probs, self.layout.top_k, dim=-1).indices.reshape(-1)
        counts = torch.bincount(chosen, minlength=self.layout.num_experts)
        entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=-1)
        self._counts[index] += counts.double().cpu()
        self._entropy[index] += float(entropy.sum())
        self._rows[index] += float(probs.shape[0])

    def step_totals(self) -> list[float]:
        """This rank's sums since the last ``finish_step`` (for an all-reduce)."""
        return [
            *self._counts.reshape(-1).tolist(),
            *self._entropy.tolist(),
            *self._rows.tolist(),
            self._aux_sum,
            self._aux_weight,
        ]

    def finish_step(self, totals: list[float]) -> RoutingStats | None:
        """Turn the (all-reduced) sums of ``step_totals`` into the step's statistics."""
        self._reset_totals()
        n, e = self.num_layers, self.layout.num_experts
        counts = totals[: n * e]
        entropy = totals[n * e : n * e + n]
        rows = totals[n * e + n : n * e + 2 * n]
        aux_sum, aux_weight = totals[-2], totals[-1]
        if not any(rows):
            return None
        share = []
        for i in range(n):
            row = counts[i * e : (i + 1) * e]
            total = sum(row)
            share.append([c / total if total else 0.0 for c in row])
        return RoutingStats(
            layers=[layer.index for layer in self.layout.layers],
            token_share=share,
            entropy=[entropy[i] / rows[i] if rows[i] else math.nan for i in range(n)],
            aux_loss=aux_sum / aux_weight if aux_weight else None,
        )
