"""The training methods and everything kubetune knows about each, in one table.

The CRD's CEL rules, the resolver's defaults, the validator's recommended ranges and
the trainer (batching, load dtype, model card) all read ``METHOD_TRAITS``; adding a
method is one row here plus its trainer implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, get_args

Method = Literal[
    "full",
    "lora",
    "qlora",
    "prefix",
    "prompt",
    "adapter",
    "reward",
    "ppo",
    "dpo",
    "grpo",
    "rloo",
    "kto",
    "orpo",
]
METHODS: tuple[str, ...] = get_args(Method)

Family = Literal["full", "peft", "preference", "reward", "rl"]
# How the trained result is written: a whole causal LM, a PEFT adapter, kubetune's
# bottleneck adapter, or a sequence classifier (reward model).
SavedAs = Literal["model", "peft-adapter", "bottleneck-adapter", "reward-model"]
DatasetFormat = Literal[
    "chat", "promptCompletion", "text", "preference", "promptOnly", "unpaired", "visionChat"
]
SFT_FORMATS: tuple[DatasetFormat, ...] = ("chat", "promptCompletion", "text")
#: chat with images: vision-language models, trained fully or with LoRA (spec.vision)
VISION_FORMATS: tuple[DatasetFormat, ...] = (*SFT_FORMATS, "visionChat")
RL_BLOCKS = ("rlhf", "rlhf.reward", "rlhf.generation", "rlhf.kl", "rlhf.guards", "rlhf.roles")


@dataclass(frozen=True)
class MethodTraits:
    """One method's facts: what it accepts, how it trains, and its defaults from practice."""

    family: Family
    title: str  # how the docs name it
    learning_rate: float
    learning_rate_range: tuple[float, float]  # recommended; outside it is a warning
    epochs: float = 3.0
    weight_decay: float = 0.0
    #: run by this version's trainer; the others are refused by the API server
    supported: bool = True
    #: padding-free packing possible: virtual tokens are prepended per sample and
    #: reward models pool each row's last token, so those methods cannot pack
    packs: bool = False
    #: optional spec blocks the method accepts (parents listed too: "peft", "peft.lora")
    blocks: tuple[str, ...] = ()
    #: the trained weights fold back into the base model (low-rank updates only)
    mergeable: bool = False
    #: the loss compares the policy with a reference model
    needs_reference: bool = False
    saved_as: SavedAs = "model"
    #: dataset formats the method trains on
    formats: tuple[DatasetFormat, ...] = SFT_FORMATS
    #: the policy may be a LoRA adapter (``spec.peft.lora`` set) instead of full weights
    lora_option: bool = False

    @property
    def takes_peft(self) -> bool:
        """The method trains a PEFT part on a frozen base (and takes ``spec.peft``)."""
        return self.family == "peft"

    @property
    def preference_data(self) -> bool:
        """Trains on preference data, normalised per example (pairs), not per token."""
        return self.family in ("preference", "reward")

    @property
    def online(self) -> bool:
        """Learns from its own sampled responses (PPO, GRPO, RLOO)."""
        return self.family == "rl"


METHOD_TRAITS: Mapping[str, MethodTraits] = MappingProxyType(
    {
        "full": MethodTraits(
            "full",
            "full fine-tuning",
            2e-5,
            (1e-5, 5e-5),
            weight_decay=0.01,
            packs=True,
            formats=VISION_FORMATS,
        ),
        "lora": MethodTraits(
            "peft",
            "LoRA",
            2e-4,
            (5e-5, 5e-4),
            packs=True,
            blocks=("peft", "peft.lora"),
            mergeable=True,
            saved_as="peft-adapter",
            formats=VISION_FORMATS,
        ),
        "qlora": MethodTraits(
            "peft",
            "QLoRA",
            2e-4,
            (5e-5, 5e-4),
            packs=True,
            blocks=("peft", "peft.lora", "peft.quantization"),
            mergeable=True,
            saved_as="peft-adapter",
        ),
        "prefix": MethodTraits(
            "peft",
            "prefix tuning",
            1e-2,
            (1e-3, 5e-2),
            blocks=("peft", "peft.prefix"),
            saved_as="peft-adapter",
        ),
        "prompt": MethodTraits(
            "peft",
            "prompt tuning",
            3e-2,
            (1e-3, 3e-1),
            blocks=("peft", "peft.prompt"),
            saved_as="peft-adapter",
        ),
        "adapter": MethodTraits(
            "peft",
            "bottleneck adapters",
            1e-4,
            (5e-5, 1e-3),
            packs=True,
            blocks=("peft", "peft.adapter"),
            saved_as="bottleneck-adapter",
        ),
        "reward": MethodTraits(
            "reward",
            "reward model",
            1e-5,
            (5e-6, 5e-5),
            epochs=1.0,
            blocks=("rlhf",),
            saved_as="reward-model",
            formats=("preference",),
        ),
        "ppo": MethodTraits(
            "rl",
            "PPO",
            1e-6,
            (1e-7, 1e-5),
            epochs=1.0,
            blocks=(*RL_BLOCKS, "rlhf.ppo"),
            needs_reference=True,
            formats=("promptOnly",),
            lora_option=True,
        ),
        "dpo": MethodTraits(
            "preference",
            "DPO",
            5e-7,
            (1e-7, 5e-6),
            epochs=1.0,
            blocks=("rlhf", "rlhf.dpo"),
            needs_reference=True,
            formats=("preference",),
            lora_option=True,
        ),
        "grpo": MethodTraits(
            "rl",
            "GRPO",
            1e-6,
            (1e-7, 1e-5),
            epochs=1.0,
            blocks=(*RL_BLOCKS, "rlhf.grpo"),
            needs_reference=True,
            formats=("promptOnly",),
            lora_option=True,
        ),
        "rloo": MethodTraits(
            "rl",
            "RLOO",
            1e-6,
            (1e-7, 1e-5),
            epochs=1.0,
            blocks=(*RL_BLOCKS, "rlhf.rloo"),
            needs_reference=True,
            formats=("promptOnly",),
            lora_option=True,
        ),
        "kto": MethodTraits(
            "preference",
            "KTO",
            5e-7,
            (1e-7, 5e-6),
            epochs=1.0,
            blocks=("rlhf", "rlhf.kto"),
            needs_reference=True,
            formats=("unpaired", "preference"),
            lora_option=True,
        ),
        "orpo": MethodTraits(
            "preference",
            "ORPO",
            8e-6,
            (1e-6, 5e-5),
            epochs=1.0,
            blocks=("rlhf", "rlhf.orpo"),
            formats=("preference",),
            lora_option=True,
        ),
    }
)


def saved_as(method: str, lora: bool) -> SavedAs:
    """How ``method``'s result is written; a LoRA policy (``spec.peft.lora`` on a method
    with ``lora_option``) is a PEFT adapter whatever the method's full-weight form is."""
    traits = METHOD_TRAITS[method]
    return "peft-adapter" if lora and traits.lora_option else traits.saved_as


def methods_where(predicate: Callable[[MethodTraits], bool]) -> tuple[str, ...]:
    """The methods (in API order) whose traits satisfy ``predicate``."""
    return tuple(name for name, traits in METHOD_TRAITS.items() if predicate(traits))


def cel_list(values: tuple[str, ...]) -> str:
    """Render a tuple of strings as a CEL list literal."""
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"
