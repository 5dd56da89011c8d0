"""Bottleneck adapters in Pfeiffer's or Houlsby's placement, implemented here.

Why not a library: PEFT 0.21 has no bottleneck adapters and cannot register a new
tuner type from outside (``register_peft_method`` only accepts names already in its
``PeftType`` enum), and the ``adapters`` package pins transformers ~=4.57, which we do
not downgrade. The method is small enough to own: one module per decoder layer.

Placement (``peft.adapter.placement``): ``pfeiffer`` (the default; Pfeiffer et al. 2021)
puts one adapter after the MLP of every decoder layer, ``houlsby`` (Houlsby et al. 2019)
two, after the attention and after the MLP. Each sits before the layer's residual add:
``out + scaling * up(act(down(out)))``. ``up`` is zero-initialised, so the adapted model
starts exactly equal to the base model and training moves it away smoothly. An adapter
is attached as a submodule of the block it follows (``<mlp>.kubetune_adapter``,
``<self_attn>.kubetune_adapter``) and applied by a forward hook, so base weight names are
untouched (the base still loads/saves as a normal HF model) and ZeRO-3/FSDP see ordinary
parameters. The hooks run inside the decoder layer's forward, so gradient checkpointing
recomputes them with the layer.

Output: ``adapter_model.safetensors`` (adapter weights only) + ``kubetune_adapter.json``.
Adapters cannot be merged into the base weights (the non-linearity is in the way).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from kubetune.api.training import AdapterSettings
from kubetune_trainer.errors import UnsupportedError
from kubetune_trainer.methods.base import Method, save_tokenizer
from kubetune_trainer.models.load import load_causal_lm

ADAPTER_ATTR = "kubetune_adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "kubetune_adapter.json"
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
#: placement -> the blocks of a decoder layer (HF attribute names) followed by an adapter
PLACEMENTS: dict[str, tuple[str, ...]] = {"pfeiffer": ("mlp",), "houlsby": ("self_attn", "mlp")}
#: what ``kubetune_adapter.json`` called the Pfeiffer placement before Houlsby's existed
_LEGACY_PLACEMENTS = {"after_mlp": "pfeiffer"}


class BottleneckAdapter(nn.Module):
    """down-projection, non-linearity, (dropout), zero-initialised up-projection."""

    def __init__(self, hidden_size: int, settings: AdapterSettings) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, settings.bottleneck_size)
        self.act = _ACTIVATIONS[settings.non_linearity]()
        self.dropout = nn.Dropout(settings.dropout)
        self.up = nn.Linear(settings.bottleneck_size, hidden_size)
        self.scaling = settings.scaling
        self.enabled = True
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        delta = self.up(self.dropout(self.act(self.down(hidden.to(self.down.weight.dtype)))))
        return (delta * self.scaling).to(hidden.dtype)


def _adapter_hook(module: nn.Module, args: Any, output: Any) -> Any:
    adapter: BottleneckAdapter = getattr(module, ADAPTER_ATTR)
    if not adapter.enabled:
        return output
    if isinstance(output, tuple):  # attention returns (hidden states, attention weights)
        return (output[0] + adapter(output[0]), *output[1:])
    return output + adapter(output)


def _sites(model: nn.Module, blocks: tuple[str, ...]) -> list[nn.Module]:
    """The named blocks of every decoder layer, in layer order (HF convention:
    ``<layer>.self_attn``, ``<layer>.mlp``)."""
    from kubetune_trainer.methods.base import find_pretrained

    inner = find_pretrained(model)
    layer_classes = set(getattr(inner, "_no_split_modules", None) or [])
    sites = []
    for module in model.modules():
        if type(module).__name__ not in layer_classes:
            continue
        found = [getattr(module, name, None) for name in blocks]
        if all(isinstance(block, nn.Module) for block in found):
            sites.extend(cast(list[nn.Module], found))
    return sites


def add_adapters(model: nn.Module, settings: AdapterSettings) -> int:
    """Freeze ``model`` and attach the trainable adapters of ``settings.placement``; returns
    how many (one or two per decoder layer)."""
    for param in model.parameters():
        param.requires_grad_(False)
    hidden = int(cast(Any, model).config.hidden_size)
    blocks = PLACEMENTS[settings.placement]
    sites = _sites(model, blocks)
    if not sites:
        raise UnsupportedError(
            f"cannot place {settings.placement} bottleneck adapters in {type(model).__name__}:"
            f" no decoder layers with {' and '.join('.' + b for b in blocks)} submodules"
        )
    ref = next(model.parameters())
    for site in sites:
        adapter = BottleneckAdapter(hidden, settings).to(device=ref.device, dtype=torch.float32)
        site.add_module(ADAPTER_ATTR, adapter)
        site.register_forward_hook(_adapter_hook)
    return len(sites)


def adapter_modules(model: nn.Module) -> list[BottleneckAdapter]:
    return [m for m in model.modules() if isinstance(m, BottleneckAdapter)]


class BottleneckAdapterMethod(Method):
    name = "adapter"

    @property
    def settings(self) -> AdapterSettings:
        peft = self.job.spec.peft
        assert peft is not None and peft.adapter is not None  # config.check_runnable
        return peft.adapter

    def build(self, model_dir: Path, tokenizer: Any, load_dtype: torch.dtype) -> nn.Module:
        model = self.load_base(model_dir, load_dtype)
        add_adapters(model, self.settings)
        return model

    @contextlib.contextmanager
    def base_behaviour(self, model: nn.Module) -> Iterator[None]:
        adapters = adapter_modules(model)
        for adapter in adapters:
            adapter.enabled = False
        try:
            yield
        finally:
            for adapter in adapters:
                adapter.enabled = True

    def export_state_dict(
        self, model: nn.Module, full: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {k: v for k, v in full.items() if f".{ADAPTER_ATTR}." in k}

    def save(
        self, model: nn.Module, state_dict: dict[str, torch.Tensor], out_dir: Path, tokenizer: Any
    ) -> None:
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        weights = {
            k: v.detach().to("cpu", torch.float32).contiguous()
            for k, v in self.export_state_dict(model, state_dict).items()
        }
        save_file(weights, str(out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        s = self.settings
        (out_dir / ADAPTER_CONFIG).write_text(
            json.dumps(
                {
                    "adapter_type": "bottleneck",
                    "placement": s.placement,
                    "bottleneck_size": s.bottleneck_size,
                    "non_linearity": s.non_linearity,
                    "scaling": s.scaling,
                    "dropout": s.dropout,
                    "base_model_uri": self.job.spec.model.uri,
                },
                indent=2,
            )
        )
        save_tokenizer(tokenizer, out_dir)

    def load_trained(self, base_dir: Path, trained_dir: Path) -> nn.Module:
        return load_bottleneck_adapter(base_dir, trained_dir)


def load_bottleneck_adapter(base_dir: Path, trained_dir: Path) -> nn.Module:
    """A fresh base model with the saved adapters attached (e.g. for serving/eval)."""
    from safetensors.torch import load_file

    config = json.loads((trained_dir / ADAPTER_CONFIG).read_text())
    placement = config.get("placement", "pfeiffer")
    settings = AdapterSettings(
        placement=_LEGACY_PLACEMENTS.get(placement, placement),
        bottleneck_size=config["bottleneck_size"],
        non_linearity=config["non_linearity"],
        scaling=config["scaling"],
        dropout=config.get("dropout", 0.0),
    )
    model = load_causal_lm(base_dir, dtype=torch.float32)
    add_adapters(model, settings)
    weights = load_file(str(trained_dir / ADAPTER_WEIGHTS))
    result = model.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys if f".{ADAPTER_ATTR}." in k]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"adapter weights do not match the model: missing {missing[:3]}, "
            f"unexpected {list(result.unexpected_keys)[:3]}"
        )
    return model
