"""A method's policy as a LoRA adapter on a frozen base (``spec.peft.lora``).

The preference and RL methods (DPO, KTO, ORPO; PPO, GRPO, RLOO) define their loss on a
policy; whether that policy is the full model or a LoRA adapter changes only how it is
built, saved, reloaded and merged, which ``LoraMethod`` already does. ``lora_policy``
combines the two: the method's loss and hooks with LoRA's model handling. Its
``base_behaviour`` disables the adapter, so a reference computed under it (the
reference-based methods do) is the base itself, with no second copy in memory.
"""

from __future__ import annotations

from functools import cache
from typing import cast

from kubetune.api.methods import METHOD_TRAITS
from kubetune.api.resolve import ResolvedJob
from kubetune_trainer.methods.base import Method
from kubetune_trainer.methods.lora import LoraMethod


@cache
def lora_policy(method: type[Method]) -> type[Method]:
    """The LoRA-policy variant of a full-weight method class (one class per method)."""
    if not METHOD_TRAITS[method.name].lora_option:
        raise ValueError(f"method {method.name} has no LoRA policy option")
    # LoraMethod first in the MRO: its build/save/load/merge/base_behaviour replace the
    # full-weight ones; the loss and the prepare/attach/state hooks come from ``method``
    variant = type(f"Lora{method.__name__}", (LoraMethod, method), {"name": method.name})
    return cast(type[Method], variant)


def wants_lora_policy(job: ResolvedJob) -> bool:
    """The job trains a LoRA policy: its method allows one and ``peft.lora`` is set."""
    peft = job.spec.peft
    traits = METHOD_TRAITS[job.spec.method]
    return traits.lora_option and peft is not None and peft.lora is not None
