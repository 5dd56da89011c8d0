"""Method name -> implementation (the LoRA-policy variant with ``peft.lora`` where allowed)."""

from __future__ import annotations

from kubetune.api.resolve import ResolvedJob
from kubetune_trainer.errors import UnsupportedError
from kubetune_trainer.methods.adapters import BottleneckAdapterMethod
from kubetune_trainer.methods.base import Method
from kubetune_trainer.methods.dpo import DpoMethod
from kubetune_trainer.methods.full import FullFineTuning
from kubetune_trainer.methods.kto import KtoMethod
from kubetune_trainer.methods.lora import LoraMethod
from kubetune_trainer.methods.online import GrpoMethod, PpoMethod, RlooMethod
from kubetune_trainer.methods.orpo import OrpoMethod
from kubetune_trainer.methods.policy import lora_policy, wants_lora_policy
from kubetune_trainer.methods.reward import RewardModelMethod
from kubetune_trainer.methods.virtual_tokens import PrefixTuning, PromptTuning

METHODS: dict[str, type[Method]] = {
    "full": FullFineTuning,
    "lora": LoraMethod,
    "qlora": LoraMethod,
    "prefix": PrefixTuning,
    "prompt": PromptTuning,
    "adapter": BottleneckAdapterMethod,
    "dpo": DpoMethod,
    "reward": RewardModelMethod,
    "ppo": PpoMethod,
    "grpo": GrpoMethod,
    "rloo": RlooMethod,
    "kto": KtoMethod,
    "orpo": OrpoMethod,
}


def get_method(job: ResolvedJob) -> Method:
    """The implementation of the job's method."""
    name = job.spec.method
    cls = METHODS.get(name)
    if cls is None:
        raise UnsupportedError(f"method {name} is not supported by this trainer")
    if wants_lora_policy(job):
        cls = lora_policy(cls)
    method = cls(job)
    method.name = name
    return method
