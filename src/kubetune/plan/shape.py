"""The shape of a decoder-only transformer, read from its Hugging Face ``config.json``.

Only what the memory and time estimates need: sizes, counts and the parameter total
derived from them. The keys are the Hugging Face ones (``hidden_size``,
``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``,
``intermediate_size``, ``vocab_size``, ``tie_word_embeddings``; mixture-of-experts
counts ``num_local_experts``/``num_experts``/``n_routed_experts`` with
``num_experts_per_tok`` and ``moe_intermediate_size``); GPT-2 style aliases (``n_embd``,
``n_layer``, ``n_head``, ``n_inner``) are mapped as transformers' ``attribute_map`` does.
A vision-language config is read through its ``text_config``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_ALIASES = {
    "hidden_size": ("n_embd", "d_model"),
    "num_hidden_layers": ("n_layer", "num_layers"),
    "num_attention_heads": ("n_head",),
    "intermediate_size": ("n_inner", "ffn_dim"),
}
_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
#: families whose MLP is two matrices with a plain activation; everything else (Llama,
#: Mistral, Qwen, Gemma, Phi-3, ...) is gated (SwiGLU/GeGLU: gate, up and down)
_PLAIN_MLP = ("gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi", "starcoder2")
#: families whose config class ties the output head to the embeddings by default
#: config fields of logits transformed after the head (softcapping, scaling); the trainer's
#: chunked loss would skip the transformation, so it keeps full logits for these
LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)
_TIED_BY_DEFAULT = ("gpt2", "gpt_neox", "opt", "bloom", "gemma", "gemma2", "gemma3_text")


class ShapeError(ValueError):
    """The config cannot describe a decoder transformer (a key is missing or not a count)."""


@dataclass(frozen=True)
class ModelShape:
    """Sizes of a decoder transformer; ``parameters`` is exact when the weights were counted."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool
    gated_mlp: bool = True
    #: routed experts per layer (0: dense), experts used per token, and their MLP width
    num_experts: int = 0
    experts_per_token: int = 0
    expert_intermediate_size: int = 0
    #: always-on shared experts' total MLP width (DeepSeek, Qwen-MoE), 0 if none
    shared_expert_intermediate_size: int = 0
    model_type: str = ""
    #: logits transformed after the head (softcapping, scaling): the trainer keeps the
    #: full-logits loss for these, not its chunked one
    logit_transform: bool = False
    #: counted from the safetensors headers (the validation pod); else derived
    counted_parameters: int | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """Read a ``config.json`` mapping; a clear :class:`ShapeError` names a missing key."""
        if isinstance(config.get("text_config"), Mapping):  # vision-language models
            config = {"model_type": config.get("model_type", ""), **config["text_config"]}

        def get(key: str, default: int | None = None) -> int:
            for name in (key, *_ALIASES.get(key, ())):
                value = config.get(name)
                if value is not None:
                    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                        raise ShapeError(f"config.json: {name} must be a count, not {value!r}")
                    return value
            if default is None:
                raise ShapeError(
                    f"config.json has no {key}: kubetune plan reads decoder transformers "
                    "in Hugging Face format"
                )
            return default

        model_type = str(config.get("model_type") or "")
        hidden = get("hidden_size")
        heads = get("num_attention_heads")
        if heads == 0 or hidden == 0:
            raise ShapeError("config.json: hidden_size and num_attention_heads must be positive")
        experts = next((get(k) for k in _EXPERT_KEYS if config.get(k)), 0)
        tied = config.get("tie_word_embeddings")
        return cls(
            hidden_size=hidden,
            num_layers=get("num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=get("num_key_value_heads", heads) or heads,
            head_dim=get("head_dim", hidden // heads) or hidden // heads,
            intermediate_size=get("intermediate_size", 4 * hidden),
            vocab_size=get("vocab_size"),
            tied_embeddings=bool(tied) if tied is not None else model_type in _TIED_BY_DEFAULT,
            gated_mlp=model_type not in _PLAIN_MLP,
            num_experts=experts,
            experts_per_token=get("num_experts_per_tok", 2) if experts else 0,
            expert_intermediate_size=(
                get("moe_intermediate_size", get("intermediate_size", 4 * hidden)) if experts else 0
            ),
            shared_expert_intermediate_size=_shared_width(config) if experts else 0,
            model_type=model_type,
            logit_transform=any(config.get(k) not in (None, 1.0) for k in LOGIT_TRANSFORMS),
        )

    @classmethod
    def from_file(cls, path: Path) -> ModelShape:
        """A ``config.json`` file, or a model directory holding one."""
        file = path / "config.json" if path.is_dir() else path
        try:
            value = json.loads(file.read_text())
        except OSError as exc:
            raise ShapeError(f"cannot read {file}: {exc.strerror or exc}") from exc
        except json.JSONDecodeError as exc:
            raise ShapeError(f"{file} is not JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ShapeError(f"{file} is not a JSON object")
        return cls.from_config(value)

    # -- sizes -----------------------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def mlp_matrices(self) -> int:
        return 3 if self.gated_mlp else 2

    def attention_parameters(self) -> int:
        """q, k, v and o projections of one layer (biases left out: < 0.1%)."""
        h = self.hidden_size
        return h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h

    def mlp_parameters(self) -> int:
        """One layer's MLP: the dense MLP, or every expert plus router and shared experts."""
        h = self.hidden_size
        if not self.num_experts:
            return self.mlp_matrices * h * self.intermediate_size
        experts = self.num_experts * self.mlp_matrices * h * self.expert_intermediate_size
        shared = self.mlp_matrices * h * self.shared_expert_intermediate_size
        return experts + shared + h * self.num_experts

    def layer_parameters(self) -> int:
        return self.attention_parameters() + self.mlp_parameters() + 2 * self.hidden_size

    def embedding_parameters(self) -> int:
        """Input embeddings plus the output head when it is not tied to them."""
        return self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)

    def linear_parameters(self) -> int:
        """Weights of the decoder layers' linear projections (what QLoRA quantizes)."""
        return self.num_layers * (self.attention_parameters() + self.mlp_parameters())

    @property
    def parameters(self) -> int:
        if self.counted_parameters is not None:
            return self.counted_parameters
        layers = self.num_layers * self.layer_parameters()
        return layers + self.embedding_parameters() + self.hidden_size

    def with_counted_parameters(self, count: int) -> ModelShape:
        from dataclasses import replace

        return replace(self, counted_parameters=count)

    def lora_parameters(self, rank: int, targets: tuple[str, ...]) -> int:
        """LoRA's ``rank x (in + out)`` per adapted projection; ``all-linear`` is every
        projection of every layer (the output head excluded, as PEFT does)."""
        h, q, kv = self.hidden_size, self.q_dim, self.kv_dim
        width = self.expert_intermediate_size if self.num_experts else self.intermediate_size
        copies = self.num_experts + (1 if self.shared_expert_intermediate_size else 0) or 1
        sizes = {
            "q_proj": h + q,
            "k_proj": h + kv,
            "v_proj": h + kv,
            "o_proj": q + h,
            "gate_proj": (h + width) * copies,
            "up_proj": (h + width) * copies,
            "down_proj": (width + h) * copies,
        }
        if not self.gated_mlp:
            sizes.pop("gate_proj")
        chosen = sizes.keys() if "all-linear" in targets else [t for t in targets if t in sizes]
        return rank * self.num_layers * sum(sizes[name] for name in chosen)

    def describe(self) -> str:
        moe = (
            f", {self.num_experts} experts ({self.experts_per_token} per token)"
            if self.num_experts
            else ""
        )
        return (
            f"{self.model_type or 'decoder'}: {self.num_layers} layers, hidden "
            f"{self.hidden_size}, {self.num_heads} heads ({self.num_kv_heads} KV), MLP "
            f"{self.intermediate_size}, vocabulary {self.vocab_size}{moe}"
        )


def _shared_width(config: Mapping[str, Any]) -> int:
    width = config.get("shared_expert_intermediate_size")
    if isinstance(width, int):
        return width
    shared, moe = config.get("n_shared_experts"), config.get("moe_intermediate_size")
    return shared * moe if isinstance(shared, int) and isinstance(moe, int) else 0
