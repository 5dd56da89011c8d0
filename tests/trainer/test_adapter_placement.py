"""Bottleneck adapters in Pfeiffer's placement (one per layer, after the MLP) and
Houlsby's (two, after the attention and after the MLP)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kubetune.api.training import AdapterSettings
from kubetune_trainer.methods.adapters import ADAPTER_ATTR, add_adapters, load_bottleneck_adapter
from kubetune_trainer.models.load import load_causal_lm


def _adapted(tiny_model: Path, placement: str) -> tuple[torch.nn.Module, int]:
    model = load_causal_lm(tiny_model, dtype=torch.float32)
    count = add_adapters(model, AdapterSettings(bottleneck_size=8, placement=placement))
    return model, count


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_houlsby_places_two_adapters_per_layer_and_doubles_the_parameters(
    tiny_model: Path,
) -> None:
    layers = json.loads((tiny_model / "config.json").read_text())["num_hidden_layers"]
    pfeiffer, n_pfeiffer = _adapted(tiny_model, "pfeiffer")
    houlsby, n_houlsby = _adapted(tiny_model, "houlsby")
    assert (n_pfeiffer, n_houlsby) == (layers, 2 * layers)
    # every adapter maps hidden -> hidden through the same bottleneck: exactly twice
    assert _trainable(houlsby) == 2 * _trainable(pfeiffer) > 0
    names = [name for name, _ in houlsby.named_parameters() if f".{ADAPTER_ATTR}." in name]
    assert any(f"self_attn.{ADAPTER_ATTR}." in name for name in names)
    assert not any(f"self_attn.{ADAPTER_ATTR}." in n for n, _ in pfeiffer.named_parameters())


def test_attention_adapter_changes_the_output_once_trained(tiny_model: Path) -> None:
    """The hook on the attention block really acts (``up`` starts at zero: no change)."""
    model, _ = _adapted(tiny_model, "houlsby")
    model.eval()
    ids = torch.tensor([[5, 17, 23, 42, 8, 11]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        for name, module in model.named_modules():
            if name.endswith(f"self_attn.{ADAPTER_ATTR}"):
                torch.nn.init.normal_(module.up.weight, std=0.1)
        after = model(input_ids=ids).logits
    assert not torch.allclose(before, after, atol=1e-4)


def test_legacy_adapter_config_loads_as_pfeiffer(tiny_model: Path, tmp_path: Path) -> None:
    """Outputs written before the placement existed (``"placement": "after_mlp"``) load."""
    from safetensors.torch import save_file

    model, _ = _adapted(tiny_model, "pfeiffer")
    weights = {k: v for k, v in model.state_dict().items() if f".{ADAPTER_ATTR}." in k}
    save_file(weights, str(tmp_path / "adapter_model.safetensors"))
    config = {"placement": "after_mlp", "bottleneck_size": 8, "non_linearity": "gelu"}
    (tmp_path / "kubetune_adapter.json").write_text(json.dumps({**config, "scaling": 1.0}))
    loaded = load_bottleneck_adapter(tiny_model, tmp_path)
    assert _trainable(loaded) == _trainable(model)
