"""Mixture-of-experts settings (``spec.moe``): router, expert selection, balancing loss.

A MoE base (Mixtral, Qwen2-MoE, Qwen3-MoE, ...) routes each token to ``top_k`` of its
experts. Fine-tuning it has three knobs the dense models lack: whether the router may
move, which experts may change (expert-specialised fine-tuning: train only the experts
the task routes to, ESFT), and the weight of the load-balancing auxiliary loss that keeps
the router from collapsing onto a few experts. Whether the base is a MoE at all, and
how many experts it has, only the model's config says: the trainer's validation phase
refuses ``spec.moe`` on a dense model and expert indices out of range.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from kubetune.api.base import ApiModel, cel, validations
from kubetune.api.methods import cel_list

#: the largest expert count of a released MoE model is 256 (DeepSeek-V3); leave headroom
MAX_EXPERT_INDEX = 1023
ExpertIndex = Annotated[int, Field(ge=0, le=MAX_EXPERT_INDEX)]

#: methods that compute a supervised/preference loss on the loop kubetune's MoE hooks use
MOE_METHODS = ("full", "lora", "dpo", "kto", "orpo")
#: methods whose policy is the full weights (unless peft.lora makes it a LoRA policy)
_FULL_WEIGHT = ("full", "dpo", "kto", "orpo")


class MoeSpec(ApiModel):
    """How a mixture-of-experts base model is fine-tuned."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "!has(self.trainExperts) || "
                "self.trainExperts.all(i, self.trainExperts.exists_one(j, j == i))",
                "moe.trainExperts lists an expert twice",
                field_path=".trainExperts",
            ),
        )
    }

    freeze_router: bool = Field(
        default=False,
        description="Keep the router (the gate that picks each token's experts) at its base "
        "weights, so fine-tuning cannot shift which experts a token goes to. LoRA never "
        "adapts the router unless targetModules names it.",
    )
    train_experts: list[ExpertIndex] = Field(
        default_factory=list,
        max_length=256,
        description="Expert-specialised fine-tuning: only these experts (indices into every "
        "MoE layer's experts) are trained; every other weight (attention, embeddings, "
        "router, shared experts, the other experts) stays at its base value, weight decay "
        "included. Empty: all weights train as the method says. Needs full weights "
        "(method full, or dpo/kto/orpo without peft.lora) and strategy ddp.",
    )
    router_aux_loss_coef: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Weight of the load-balancing auxiliary loss (Switch Transformer) added "
        "to the training loss. Default: the base model's config.router_aux_loss_coef "
        "(0.02 for Mixtral, 0.001 for Qwen MoE); 0 turns it off.",
    )


def moe_spec_rules() -> list[dict[str, Any]]:
    """The FineTuneJobSpec rules of ``spec.moe`` (which methods and strategies it suits)."""
    return [
        cel(
            f"!has(self.moe) || self.method in {cel_list(MOE_METHODS)}",
            "moe applies only to methods full, lora, dpo, kto and orpo (virtual tokens, "
            "bottleneck adapters and reward heads leave the experts untouched; online RL "
            "runs its own loop)",
            field_path=".moe",
        ),
        cel(
            "!has(self.moe) || !has(self.moe.trainExperts) || size(self.moe.trainExperts) == 0 "
            f"|| (self.method in {cel_list(_FULL_WEIGHT)} && "
            "!(has(self.peft) && has(self.peft.lora)))",
            "moe.trainExperts selects experts of the full weights: use method full, or "
            "dpo/kto/orpo without peft.lora (LoRA adapts every expert of a fused expert "
            "tensor)",
            field_path=".moe.trainExperts",
        ),
        cel(
            "!has(self.moe) || !has(self.moe.trainExperts) || size(self.moe.trainExperts) == 0 "
            "|| self.distributed.strategy == 'ddp'",
            "moe.trainExperts needs distributed.strategy ddp (FSDP and DeepSpeed shard the "
            "expert tensors whose rows it masks)",
            field_path=".moe.trainExperts",
        ),
        cel(
            "has(self.moe) == has(oldSelf.moe) && (!has(self.moe) || self.moe == oldSelf.moe)",
            "moe cannot change after creation; create a new FineTuneJob instead",
            field_path=".moe",
        ),
    ]
