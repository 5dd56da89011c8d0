"""Generate the DeepSpeed config from the job spec (never hand-written by users).

Every value comes from the resolved job: ZeRO stage and offload from
``spec.distributed``, micro batch and accumulation from the derived values, precision
and clipping from the hyperparameters. On CPU, ``torch_adam`` selects PyTorch's AdamW
(DeepSpeed's fused/CPU Adam kernels need compiled ops); with optimizer offload on GPUs
DeepSpeed's CPU Adam is used.
"""

from __future__ import annotations

from typing import Any

from kubetune.api.resolve import ResolvedJob
from kubetune_trainer.distributed.precision import Resolved


def build_deepspeed_config(job: ResolvedJob, precision: Resolved, *, cuda: bool) -> dict[str, Any]:
    stage = job.spec.distributed.zero_stage or 2
    offload = job.spec.distributed.offload
    hp, derived = job.spec.hyperparameters, job.derived
    zero: dict[str, Any] = {
        "stage": stage,
        "contiguous_gradients": True,
        "overlap_comm": cuda,
        "reduce_scatter": True,
        "reduce_bucket_size": 5e7,
        "allgather_bucket_size": 5e7,
    }
    if stage == 3:
        zero.update(
            {
                "stage3_gather_16bit_weights_on_model_save": True,
                "stage3_prefetch_bucket_size": 5e7,
                "stage3_param_persistence_threshold": 1e5,
            }
        )
    if offload in ("optimizer", "all"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cuda}
    if offload == "all" and stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cuda}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": hp.micro_batch_size,
        "gradient_accumulation_steps": derived.gradient_accumulation_steps,
        "train_batch_size": derived.global_batch_size,
        "gradient_clipping": hp.max_grad_norm,
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": hp.learning_rate,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "weight_decay": hp.weight_decay,
                "torch_adam": not cuda or offload == "none",
                "adam_w_mode": True,
            },
        },
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {
            "enabled": precision == "fp16",
            "loss_scale": 0,
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return config
