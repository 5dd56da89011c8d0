"""PPO's value model, trained beside the policy with its own optimizer.

Why not one optimizer over policy and value (TRL's ``PolicyAndValueWrapper``): Adam is
invariant to the scale of a loss, so a value-loss coefficient does nothing there beyond
the first steps, and the two models want learning rates an order of magnitude apart
(OpenRLHF: actor 5e-7, critic 9e-6). A separate optimizer keeps the policy engine (DDP,
FSDP, DeepSpeed, LoRA, saving, merging) exactly as every other method uses it. Every rank
holds the whole critic; gradients are averaged across ranks with one all-reduce per
update, which is what DDP would do, and identical initialisation plus identical averaged
updates keep the replicas equal (checkpoints are written by rank 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from kubetune_trainer.distributed.env import DistEnv
from kubetune_trainer.rl.rollout import Rollout
from kubetune_trainer.rl.scoring import token_values

CRITIC_FILE = "critic.pt"


class Critic:
    """A value model (classifier backbone + scalar head on every token) and its AdamW."""

    def __init__(
        self, model: nn.Module, env: DistEnv, learning_rate: float, max_grad_norm: float
    ) -> None:
        self.model = model.to(env.device).train()
        self.env = env
        self.max_grad_norm = max_grad_norm
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)

    def values(self, rollout: Rollout) -> torch.Tensor:
        return token_values(self.model, rollout)

    def step(self) -> float:
        """Average gradients across ranks, clip, update; returns the norm before clipping."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.env.world_size > 1 and dist.is_initialized():
            flat = torch.cat([p.grad.reshape(-1) for p in params if p.grad is not None])
            dist.all_reduce(flat)
            flat /= self.env.world_size
            offset = 0
            for p in params:
                assert p.grad is not None
                n = p.grad.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
                offset += n
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def save(self, directory: Path) -> None:
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }
        torch.save(state, directory / CRITIC_FILE)

    def load(self, directory: Path) -> bool:
        path = directory / CRITIC_FILE
        if not path.exists():
            return False
        state = torch.load(path, map_location=self.env.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        return True
