"""The training methods and which of them this version can run."""

from __future__ import annotations

from typing import Literal, get_args

Method = Literal["full", "lora", "qlora", "prefix", "prompt", "adapter", "reward", "ppo", "dpo"]
METHODS: tuple[str, ...] = get_args(Method)

PEFT_METHODS: tuple[str, ...] = ("lora", "qlora", "prefix", "prompt", "adapter")
LORA_METHODS: tuple[str, ...] = ("lora", "qlora")
PREFERENCE_METHODS: tuple[str, ...] = ("reward", "dpo")
RLHF_METHODS: tuple[str, ...] = ("reward", "ppo", "dpo")

# Part of the API (so manifests and tooling can name them) but not yet run by the
# trainer: refused by the API server with a clear message instead of mishandled.
UNSUPPORTED_METHODS: tuple[str, ...] = ("ppo",)

# Padding-free packing needs whole-row independence the other methods lack: virtual
# tokens are prepended per sample and reward models pool each row's last token.
PACKING_METHODS: tuple[str, ...] = ("full", "lora", "qlora", "adapter")

# Only the low-rank methods have weights that fold back into the base model.
MERGEABLE_METHODS: tuple[str, ...] = LORA_METHODS


def cel_list(values: tuple[str, ...]) -> str:
    """Render a tuple of strings as a CEL list literal."""
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"
