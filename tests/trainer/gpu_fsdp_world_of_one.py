"""FSDP2 + LoRA + bf16 in a world of one NCCL rank, for machines with a single GPU.

NCCL refuses two ranks on one GPU ("Duplicate GPU detected", NCCL >= 2.5), so on a
one-GPU machine the FSDP2 engine is exercised with one rank: ``fully_shard`` wraps
every decoder layer, the mixed-precision policy computes in bf16, and the optimizer
steps on DTensor shards, through the trainer's own ``FsdpEngine``. Prints one JSON line.

Usage: python tests/trainer/gpu_fsdp_world_of_one.py JOB.json MODEL_DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def main(config: Path, model_dir: Path) -> dict[str, object]:
    from peft import LoraConfig, get_peft_model
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.config import load_job
    from kubetune_trainer.distributed.env import DistEnv
    from kubetune_trainer.distributed.strategy import FsdpEngine

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    cuda = torch.cuda.is_available()  # CPU + gloo only to check this script off a GPU
    if cuda:
        torch.cuda.set_device(0)
    backend = "nccl" if cuda else "gloo"
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    dist.init_process_group(backend, rank=0, world_size=1)
    try:
        job = load_job(config)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model = get_peft_model(
            base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
        )
        env = DistEnv(0, 1, 0, device, backend)
        engine = FsdpEngine(
            model,
            env,
            "bf16",
            job,
            lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0),
        )
        ids = torch.randint(0, 100, (2, 32), device=device)
        losses, dtype = [], ""
        for _ in range(6):
            out = engine.forward(input_ids=ids, labels=ids, use_cache=False)
            engine.backward(out.loss, last_micro_batch=True)
            engine.clip_gradients(1.0)
            engine.optimizer_step()
            losses.append(float(out.loss.detach()))
            dtype = str(out.logits.dtype)
        trainable = [p for p in model.parameters() if p.requires_grad]
        state = engine.full_state_dict()
        return {
            "losses": losses,
            "logits_dtype": dtype,
            "sharded": all(isinstance(p, DTensor) for p in model.parameters()),
            "trainable": len(trainable),
            "state_keys": len(state or {}),
        }
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]))))
