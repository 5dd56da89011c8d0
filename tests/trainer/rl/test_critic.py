"""The critic's replicas stay identical across ranks: gradients are averaged before a step."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from kubetune_trainer.distributed.env import DistEnv
from kubetune_trainer.rl.critic import Critic


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _batch(rank: int) -> torch.Tensor:
    return torch.arange(8, dtype=torch.float32).view(2, 4) * (rank + 1) / 10


def _worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    env = DistEnv(
        rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu"), backend="gloo"
    )
    critic = Critic(_model(), env, learning_rate=0.1, max_grad_norm=100.0)
    critic.model(_batch(rank)).pow(2).mean().backward()  # a different loss on each rank
    critic.step()
    torch.save(critic.model.state_dict(), f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_take_the_step_of_the_averaged_gradient(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)

    # the reference: one process, the mean of both ranks' losses (= their mean gradient)
    single = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    critic = Critic(_model(), single, learning_rate=0.1, max_grad_norm=100.0)
    losses = [critic.model(_batch(r)).pow(2).mean() for r in (0, 1)]
    (sum(losses) / 2).backward()
    critic.step()
    for name, value in critic.model.state_dict().items():
        assert torch.equal(rank0[name], rank1[name]), name
        torch.testing.assert_close(rank0[name], value, rtol=1e-6, atol=1e-7)
    assert not torch.equal(rank0["0.weight"], _model().state_dict()["0.weight"])  # it moved
