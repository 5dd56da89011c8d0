"""LoRA targets on a mixture-of-experts model: the experts, never the router by accident.

PEFT's ``all-linear`` matches ``nn.Linear`` modules only. On a transformers-5 MoE model the
experts are fused 3-D parameters, so ``all-linear`` alone adapts attention, the shared
expert and the shared expert's 1-output gate, and not a single expert; and for the model
types PEFT converts from the transformers-4 layout (Mixtral, Qwen3-MoE) a *string*
target is re-resolved to the v4 names, router ``gate`` included. So the targets are
resolved here, to explicit module paths, and fused expert tensors are adapted through
``LoraConfig(target_parameters=...)`` (PEFT's ParamWrapper: a rank-r update per expert):

- ``experts``: the expert projections only (fused tensors or per-expert Linears);
- ``all-linear``: every Linear but the output head (PEFT's rule) plus the expert
  projections, minus router-like Linears (a ``gate`` of 1 or E outputs in a MoE block);
- any other name passes through unchanged (so naming a router adapts it: it was asked).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from torch import nn

from kubetune.api.training import LoraSettings
from kubetune_trainer.errors import InvalidConfigError
from kubetune_trainer.moe.layout import MoeLayout

log = logging.getLogger("kubetune.trainer")

#: the ``targetModules`` keyword for the expert projections
EXPERTS = "experts"


@dataclass
class LoraTargets:
    """The PEFT ``LoraConfig`` arguments that place the adapters."""

    target_modules: list[str]
    target_parameters: list[str] = field(default_factory=list)


def resolve_targets(model: nn.Module, layout: MoeLayout, names: list[str]) -> LoraTargets:
    """Turn ``peft.lora.targetModules`` into PEFT arguments for the MoE ``model``."""
    experts_params: set[str] = set()
    expert_linears: list[str] = []
    for layer in layout.layers:
        local = layer.experts_name.rpartition(".")[2]
        experts_params.update(f"{local}.{n}" for n in layer.fused_parameters(layout.num_experts))
        for index, expert in enumerate(layer.expert_modules()):
            expert_linears.extend(
                f"{layer.experts_name}.{index}.{n}"
                for n, m in expert.named_modules()
                if isinstance(m, nn.Linear)
            )
    wanted = set(names)
    others = [n for n in names if n not in (EXPERTS, "all-linear")]
    if "all-linear" in wanted:
        return LoraTargets(_all_linear(model, layout), sorted(experts_params))
    if EXPERTS in wanted:
        return LoraTargets(others + expert_linears, sorted(experts_params))
    return LoraTargets(list(names))


def _all_linear(model: nn.Module, layout: MoeLayout) -> list[str]:
    """Full paths of the Linears PEFT's all-linear takes, without the MoE blocks' gates."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    blocks = {layer.name for layer in layout.layers}
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or module is head:
            continue
        parent, _, local = name.rpartition(".")
        gate_like = "gate" in local and module.out_features in (1, layout.num_experts)
        if parent in blocks and gate_like:
            continue
        found.append(name)
    return found


def moe_lora_targets(model: nn.Module, names: list[str]) -> LoraTargets | None:
    """MoE-aware targets for ``model``, or None for a dense model (PEFT's rules apply)."""
    from kubetune_trainer.moe.layout import find_layout

    layout = find_layout(model)
    return resolve_targets(model, layout, names) if layout is not None else None


def moe_lora_dropout(targets: LoraTargets, settings: LoraSettings) -> float:
    """The dropout PEFT can apply: none when fused expert tensors are adapted.

    PEFT's ParamWrapper cannot factor the input out of ``B A dropout(x)`` for a fused
    tensor, so it refuses dropout; DoRA it cannot do at all (refused here, clearly)."""
    if not targets.target_parameters:
        return settings.dropout
    if settings.use_dora:
        raise InvalidConfigError(
            "peft.lora.useDora cannot adapt fused expert tensors (PEFT has no DoRA for them): "
            "set useDora false, or list attention modules only in targetModules"
        )
    if settings.dropout:
        log.warning(
            "peft.lora.dropout %.3g ignored: LoRA on fused expert tensors has no dropout "
            "(the whole adapter trains without it)",
            settings.dropout,
        )
    return 0.0
