"""Tiny mixture-of-experts base models, built locally like ``tiny.py``'s dense ones.

Mixtral-, Qwen2-MoE- (with a shared expert) and Qwen3-MoE-style decoders from the
transformers 5 config classes, with random weights and the same byte-level tokenizer
and ChatML template as the dense tiny models; saved as ordinary Hugging Face
directories (transformers 5 fuses the experts into 3-D tensors when it loads them). The
router is initialised so its logits have a standard deviation of ``router_logit_std``:
routing is decisive from the first step, as in a trained model (a 0.02-scaled router
gives near-uniform probabilities, which hides both imbalance and the balancing loss).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kubetune_trainer.models.tiny import build_tokenizer, default_corpus, publish_tiny

MoeFamily = Literal["mixtral", "qwen2_moe", "qwen3_moe"]


@dataclass(frozen=True)
class TinyMoeSpec:
    """Shape of a tiny MoE decoder; the defaults train a few steps/s on 2 CPU cores."""

    family: MoeFamily = "qwen3_moe"
    vocab_size: int = 1024
    hidden_size: int = 64
    #: per-expert intermediate size (Mixtral: the experts' intermediate_size)
    expert_intermediate_size: int = 64
    num_experts: int = 4
    num_experts_per_tok: int = 2
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    router_aux_loss_coef: float = 0.01
    #: standard deviation of the initial router logits (for unit-RMS hidden states)
    router_logit_std: float = 1.5
    seed: int = 0


def _moe_config(spec: TinyMoeSpec, tokenizer: Any) -> Any:
    common: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "max_position_embeddings": spec.max_position_embeddings,
        "num_experts_per_tok": spec.num_experts_per_tok,
        "router_aux_loss_coef": spec.router_aux_loss_coef,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": None,
        "use_cache": True,
    }
    if spec.family == "mixtral":
        from transformers import MixtralConfig

        return MixtralConfig(
            **common,
            num_local_experts=spec.num_experts,
            intermediate_size=spec.expert_intermediate_size,
        )
    moe: dict[str, Any] = {
        "num_experts": spec.num_experts,
        "moe_intermediate_size": spec.expert_intermediate_size,
        "intermediate_size": 2 * spec.expert_intermediate_size,
        "decoder_sparse_step": 1,
        "norm_topk_prob": True,
    }
    if spec.family == "qwen2_moe":
        from transformers import Qwen2MoeConfig

        return Qwen2MoeConfig(
            **common, **moe, shared_expert_intermediate_size=2 * spec.expert_intermediate_size
        )
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(**common, **moe)


def build_tiny_moe_model(
    out_dir: Path, spec: TinyMoeSpec | None = None, corpus: Sequence[str] | None = None
) -> Path:
    """Build (deterministically) and save a tiny MoE model + tokenizer to ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.moe.layout import find_layout

    spec = spec or TinyMoeSpec()
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(corpus if corpus is not None else default_corpus(), spec.vocab_size)
    config = _moe_config(spec, tokenizer)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    layout = find_layout(model)
    assert layout is not None, f"{spec.family} built without MoE layers"
    with torch.no_grad():
        for param in layout.router_parameters():
            param.normal_(0.0, spec.router_logit_std / spec.hidden_size**0.5)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return publish_tiny(out_dir, model, tokenizer, spec)


def ensure_tiny_moe_model(
    out_dir: Path, spec: TinyMoeSpec | None = None, corpus: Sequence[str] | None = None
) -> Path:
    """Build the model once; reuse it when a complete build is already there."""
    if (Path(out_dir) / "kubetune_tiny.json").exists():
        return Path(out_dir)
    return build_tiny_moe_model(out_dir, spec, corpus)
