"""Memory per role of colocated online RL, estimated before any GPU is requested.

Every process of a PPO gang holds four models (policy, reference, reward, value) and the
KV cache of one generation chunk; GRPO and RLOO drop the value model, a LoRA policy drops
the reference (the base under the adapter serves) and a verifiable reward drops the reward
model. The validation pod prints this split so a job that cannot fit is seen before it is
scheduled. Rules (per process, DDP or ZeRO-1/2 without offload, so an upper bound there):

* trained parameters: 16 bytes each (fp32 master weight, gradient, AdamW's two moments);
* frozen parameters: their load dtype (2 bytes in bf16, 4 in fp32);
* the value model trains in fp32 with its own AdamW: 16 bytes per parameter;
* KV cache: 2 (K and V) x layers x KV heads x head dim x dtype bytes per token, for every
  sequence of a generation chunk (micro-batch prompts x samples) at its full length.

Activations of the update are left out: they depend on the attention kernel and
checkpointing and are shared with every other method's estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 1024**3
TRAINED_BYTES_PER_PARAMETER = 16


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs from a model's config.json."""

    parameters: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: Any, parameters: int) -> ModelShape:
        heads = int(getattr(config, "num_attention_heads", 1) or 1)
        hidden = int(getattr(config, "hidden_size", 0) or 0)
        head_dim = getattr(config, "head_dim", None) or (hidden // heads if heads else 0)
        return cls(
            parameters=parameters,
            hidden_size=hidden,
            intermediate_size=int(getattr(config, "intermediate_size", 4 * hidden) or 0),
            num_layers=int(getattr(config, "num_hidden_layers", 0) or 0),
            num_kv_heads=int(getattr(config, "num_key_value_heads", heads) or heads),
            head_dim=int(head_dim),
        )

    def lora_parameters(self, rank: int) -> int:
        """Adapter parameters of LoRA on every linear layer of a Llama-style decoder."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.num_kv_heads * self.head_dim
        per_layer = (h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h)
        return rank * per_layer * self.num_layers

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes


@dataclass(frozen=True)
class RoleMemory:
    role: str
    bytes: int
    how: str


def estimate_roles(
    policy: ModelShape,
    *,
    dtype_bytes: int,
    lora_rank: int | None,
    reward: ModelShape | None,
    value: ModelShape | None,
    sequences_per_chunk: int,
    tokens_per_sequence: int,
) -> list[RoleMemory]:
    """Bytes per process of each role (and the KV cache), in the order they are loaded."""
    roles: list[RoleMemory] = []
    if lora_rank is None:
        roles.append(
            RoleMemory(
                "policy",
                policy.parameters * TRAINED_BYTES_PER_PARAMETER,
                "full weights, gradients and AdamW state",
            )
        )
        roles.append(
            RoleMemory("reference", policy.parameters * dtype_bytes, "frozen copy of the base")
        )
    else:
        adapter = policy.lora_parameters(lora_rank)
        roles.append(
            RoleMemory(
                "policy",
                policy.parameters * dtype_bytes + adapter * TRAINED_BYTES_PER_PARAMETER,
                f"frozen base + LoRA r={lora_rank} ({adapter:,} trained parameters)",
            )
        )
        roles.append(RoleMemory("reference", 0, "the base under the adapter (no copy)"))
    if reward is not None:
        roles.append(RoleMemory("reward", reward.parameters * dtype_bytes, "frozen classifier"))
    if value is not None:
        roles.append(
            RoleMemory(
                "value", value.parameters * TRAINED_BYTES_PER_PARAMETER, "fp32 with its own AdamW"
            )
        )
    kv = policy.kv_bytes_per_token(dtype_bytes) * sequences_per_chunk * tokens_per_sequence
    roles.append(
        RoleMemory(
            "kv-cache", kv, f"{sequences_per_chunk} sequences x {tokens_per_sequence} tokens"
        )
    )
    return roles


def describe(roles: list[RoleMemory]) -> str:
    """One line: each role's GiB and the total."""
    total = sum(r.bytes for r in roles)
    parts = ", ".join(f"{r.role} {r.bytes / GIB:.2f} GiB ({r.how})" for r in roles)
    return (
        f"memory per process (estimate, activations excluded): {parts}; total {total / GIB:.2f} GiB"
    )
