"""Method x strategy x batch-shape combinations the trainer cannot run, refused by CEL.

Each rule here used to surface only at run time, after the GPUs were granted and the
model loaded; every one depends on the spec alone, so the API server (and ``kubetune
validate``) refuse it instead.

QLoRA's frozen base is bitsandbytes 4-bit storage, placed whole on each GPU by
``device_map``: DDP replicates it and DeepSpeed ZeRO-1/2 shard only the optimizer state
and gradients of the LoRA weights, so both run it; FSDP and ZeRO-3 flatten and shard the
base weights themselves, which packed 4-bit tensors (uint8 storage, per-block quant
state held outside the parameter) do not survive. (QLoRA with ZeRO-2 has not run on a
GPU yet: tests/trainer/test_gpu.py::test_qlora_with_deepspeed_zero2_on_gpu checks it.)
"""

from __future__ import annotations

from typing import Any

from kubetune.api.base import cel

QLORA_STRATEGY_MESSAGE = (
    "method qlora keeps its 4-bit base whole on every GPU: use strategy ddp, or deepspeed "
    "with zeroStage 1 or 2 (fsdp and ZeRO-3 shard the base weights, which bitsandbytes "
    "4-bit storage does not allow)"
)


def qlora_shards_base(method: str, strategy: str, zero_stage: int | None) -> bool:
    """The Python twin of the CEL rule, for documents that never met the API server."""
    return method == "qlora" and (
        strategy == "fsdp" or (strategy == "deepspeed" and zero_stage == 3)
    )


def combination_rules() -> list[dict[str, Any]]:
    """FineTuneJobSpec rules that tie the method to the strategy or the batch shape."""
    return [
        cel(
            "self.method != 'qlora' || self.distributed.strategy == 'ddp' || "
            "(self.distributed.strategy == 'deepspeed' && "
            "(!has(self.distributed.zeroStage) || self.distributed.zeroStage < 3))",
            QLORA_STRATEGY_MESSAGE,
            field_path=".distributed.strategy",
        ),
        cel(
            "!has(self.rlhf) || !has(self.rlhf.ppo) || self.resources.gpusPerNode == 0 || "
            "(self.hyperparameters.globalBatchSize / (self.hyperparameters.microBatchSize * "
            "self.resources.nodes * self.resources.gpusPerNode)) % "
            "self.rlhf.ppo.miniBatches == 0",
            "rlhf.ppo.miniBatches must divide the micro-batches per process (globalBatchSize "
            "/ (microBatchSize x nodes x gpusPerNode)): each PPO mini-batch is a whole number "
            "of micro-batches",
            field_path=".rlhf.ppo.miniBatches",
        ),
    ]
