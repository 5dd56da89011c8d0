"""Where a mixture-of-experts model keeps its routers and experts.

transformers 5 stores the experts of Mixtral, Qwen2-MoE, Qwen3-MoE (and most newer MoE
models) fused: one ``Experts`` module per layer with 3-D parameters ``[num_experts, out,
in]`` (``gate_up_proj``, ``down_proj``) instead of an ``nn.Linear`` per expert, next to a
router module ``gate``. Older and remote-code models keep an ``nn.ModuleList`` of expert
MLPs. Both are found by structure (a block with a ``gate`` and ``experts`` child), so the
same code works under PEFT wrappers and for families it was not written against.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

_LAYER_INDEX = re.compile(r"layers\.(\d+)\.")


@dataclass(frozen=True)
class MoeLayer:
    """One sparse MoE block of the model."""

    index: int  # the decoder layer it sits in
    name: str  # module path of the block (e.g. model.layers.3.mlp)
    router: nn.Module
    experts: nn.Module
    experts_name: str  # module path of the experts module

    def fused_parameters(self, num_experts: int) -> dict[str, nn.Parameter]:
        """The fused 3-D expert tensors (first dimension = expert), by local name."""
        return {
            name: param
            for name, param in _unwrapped(self.experts).named_parameters(recurse=False)
            if param.ndim == 3 and param.shape[0] == num_experts
        }

    def expert_modules(self) -> list[nn.Module]:
        """One module per expert when the experts are not fused (else empty)."""
        experts = _unwrapped(self.experts)
        return list(experts) if isinstance(experts, nn.ModuleList) else []


@dataclass(frozen=True)
class MoeLayout:
    """The model's MoE blocks plus the routing facts of its config."""

    layers: tuple[MoeLayer, ...]
    num_experts: int
    top_k: int

    def router_parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.layers for p in layer.router.parameters()]


def config_experts(config: Any) -> tuple[int, int] | None:
    """(experts per layer, experts per token) of a MoE config, or None for a dense one.

    Works on a transformers config or its ``config.json`` dict (validation reads only
    the JSON); multimodal configs keep the language model's in ``text_config``.
    """
    get = config.get if isinstance(config, dict) else lambda key: getattr(config, key, None)
    text = get("text_config")
    if text is not None and config_experts(text) is not None:
        return config_experts(text)
    for key in ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"):
        value = get(key)
        if isinstance(value, int) and value > 1:
            top_k = get("num_experts_per_tok") or get("moe_top_k") or 1
            return value, int(top_k)
    return None


def find_layout(model: nn.Module) -> MoeLayout | None:
    """The MoE layout of ``model`` (any wrapper), or None for a dense model."""
    from kubetune_trainer.methods.base import find_pretrained

    counts = config_experts(getattr(find_pretrained(model), "config", None) or {})
    if counts is None:
        return None
    layers: list[MoeLayer] = []
    for name, module in model.named_modules():
        router, experts = getattr(module, "gate", None), getattr(module, "experts", None)
        if not isinstance(router, nn.Module) or not isinstance(experts, nn.Module):
            continue
        if name.endswith(".base_layer") or ".base_layer." in name:
            continue  # a PEFT wrapper's inner copy of a block already seen
        match = _LAYER_INDEX.search(name + ".")
        index = int(match.group(1)) if match else len(layers)
        layers.append(MoeLayer(index, name, router, experts, f"{name}.experts"))
    if not layers:
        return None
    return MoeLayout(tuple(layers), *counts)


def _unwrapped(module: nn.Module) -> nn.Module:
    """The experts module under PEFT's ``ParamWrapper``s (``base_layer`` chains)."""
    current = module
    for _ in range(8):
        inner = getattr(current, "base_layer", None)
        if not isinstance(inner, nn.Module):
            return current
        current = inner
    return current
