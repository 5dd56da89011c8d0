"""The loop's view of a MoE model: set it up once, add the balancing loss, report the load.

``MoeTraining.attach`` runs after the method has built the trainable model (so PEFT's
wrappers are in place and the router/expert freezing applies on top of the method's own);
it returns None for a dense model, where the loop does exactly what it did before.
Without ``spec.moe`` a MoE base still gets the load-balancing loss at its config's
coefficient and the expert-load metrics: routing collapse is worth seeing in any run.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from kubetune.api.moe import MoeSpec
from kubetune.api.resolve import ResolvedJob
from kubetune_trainer.errors import InvalidConfigError
from kubetune_trainer.methods.base import LossOutput, find_pretrained
from kubetune_trainer.moe.layout import MoeLayout, config_experts, find_layout
from kubetune_trainer.moe.routing import RoutingRecorder, RoutingStats
from kubetune_trainer.moe.selective import ExpertSelection, freeze_router

log = logging.getLogger("kubetune.trainer")


def check_moe_config(spec: MoeSpec | None, config: Any, model_uri: str) -> str | None:
    """Validation phase: ``spec.moe`` fits the model's config (a dict or a config object).

    Returns a note for the validation summary on a MoE model, None on a dense one."""
    counts = config_experts(config)
    if counts is None:
        if spec is not None:
            raise InvalidConfigError(
                f"spec.moe is set but the model {model_uri} is not a mixture-of-experts model "
                "(its config names no experts); remove spec.moe"
            )
        return None
    experts, top_k = counts
    if spec is not None:
        wrong = [i for i in spec.train_experts if i >= experts]
        if wrong:
            raise InvalidConfigError(
                f"moe.trainExperts {wrong} out of range: the model {model_uri} has {experts} "
                f"experts per MoE layer (indices 0-{experts - 1})"
            )
    return f"mixture of experts: {experts} experts, {top_k} per token"


class MoeTraining:
    """Router/expert freezing, the balancing loss and the load metrics of one run."""

    def __init__(self, model: nn.Module, layout: MoeLayout, spec: MoeSpec | None) -> None:
        self.layout = layout
        self.spec = spec or MoeSpec()
        config = find_pretrained(model).config
        coef = self.spec.router_aux_loss_coef
        self.aux_coef = float(
            coef if coef is not None else getattr(config, "router_aux_loss_coef", 0.0) or 0.0
        )
        self.selection: ExpertSelection | None = None
        if self.spec.train_experts:
            self.selection = ExpertSelection(model, layout, self.spec.train_experts)
        if self.spec.freeze_router:
            freeze_router(layout)
        self.recorder = RoutingRecorder(model, layout)
        self.last: RoutingStats | None = None

    @classmethod
    def attach(cls, job: ResolvedJob, model: nn.Module) -> MoeTraining | None:
        """Set up a built model; None when it is dense (``spec.moe`` refused then)."""
        spec = job.spec.moe
        layout = find_layout(model)
        config = getattr(find_pretrained(model), "config", None)
        check_moe_config(spec, config if config is not None else {}, job.spec.model.uri)
        if layout is None:
            return None
        if spec is not None and spec.train_experts and _has_adapter(model):
            raise InvalidConfigError(  # the API refuses it too; a hand-written document may not
                "moe.trainExperts selects experts of the full weights; it cannot be combined "
                "with a LoRA adapter (method lora or peft.lora)"
            )
        training = cls(model, layout, spec)
        log.info(
            "mixture of experts: %d MoE layers x %d experts (top %d); router %s; %s; "
            "load-balancing loss coefficient %g",
            len(layout.layers),
            layout.num_experts,
            layout.top_k,
            "frozen" if training.spec.freeze_router or training.selection else "trains",
            f"training experts {training.spec.train_experts} only"
            if training.selection
            else "all experts train as the method says",
            training.aux_coef,
        )
        return training

    def trainable_parameters(self, model: nn.Module) -> int:
        if self.selection is not None:
            return self.selection.trainable_parameters(model)
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    def bind_optimizer(self, optimizer: torch.optim.Optimizer | None) -> None:
        if self.selection is not None:
            if optimizer is None:
                raise InvalidConfigError("moe.trainExperts needs the ddp strategy's optimizer")
            self.selection.bind(optimizer)

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        with self.recorder.capture():
            yield

    def add_aux_loss(self, out: LossOutput, count: float) -> LossOutput:
        """``out`` plus coef x aux loss, weighted by the micro-batch's count so the loop's
        normalisation turns it into the count-weighted mean over the step."""
        aux = self.recorder.take_aux_loss(count)
        if aux is not None and self.aux_coef > 0 and count > 0:
            out.loss_sum = out.loss_sum + self.aux_coef * count * aux.to(out.loss_sum.dtype)
        return out

    def finish_step(self, all_reduce: Any) -> RoutingStats | None:
        """The step's load statistics over the gang (``all_reduce``: sum of a float list;
        a collective, so every rank calls it)."""
        self.last = self.recorder.finish_step(all_reduce(self.recorder.step_totals()))
        return self.last

    def card(self) -> dict[str, Any] | None:
        """What the model card and the lineage record report (the last step's load)."""
        if self.last is None:
            return None
        return {
            "numExperts": self.layout.num_experts,
            "topK": self.layout.top_k,
            "layers": self.last.layers,
            "tokenShare": self.last.token_share,
            "routingEntropy": self.last.entropy,
            "auxLoss": self.last.aux_loss,
            "auxLossCoef": self.aux_coef,
            "freezeRouter": self.spec.freeze_router,
            "trainExperts": list(self.spec.train_experts),
        }


def _has_adapter(model: nn.Module) -> bool:
    return any(".lora_" in name for name, _ in model.named_parameters())
