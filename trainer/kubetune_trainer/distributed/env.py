"""Process-group setup from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

One process without torchrun is a world of one and needs no process group. NCCL is
used when the process has a GPU, gloo on CPU (the CI path).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from kubetune.contract.env import LOCAL_RANK_ENV, RANK_ENV, WORLD_SIZE_ENV
from kubetune_trainer.errors import InvalidConfigError

DEFAULT_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the gang."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def read_env() -> tuple[int, int, int]:
    return (
        int(os.environ.get(RANK_ENV, "0")),
        int(os.environ.get(WORLD_SIZE_ENV, "1")),
        int(os.environ.get(LOCAL_RANK_ENV, "0")),
    )


def init_distributed(strategy: str, expected_world_size: int | None = None) -> DistEnv:
    """Join the process group (if any) and pick this rank's device."""
    rank, world, local_rank = read_env()
    if expected_world_size is not None and world != expected_world_size:
        raise InvalidConfigError(
            f"the job was resolved for {expected_world_size} processes but torchrun started "
            f"{world} (WORLD_SIZE); gradient accumulation would be wrong. Re-resolve the job "
            "for this gang (kubetune run --nproc) or fix the pod template."
        )
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if world > 1 and not dist.is_initialized():
        if strategy == "deepspeed":
            import deepspeed

            deepspeed.init_distributed(dist_backend=backend, timeout=DEFAULT_TIMEOUT)
        else:
            dist.init_process_group(backend=backend, timeout=DEFAULT_TIMEOUT)
    return DistEnv(rank, world, local_rank, device, backend if world > 1 else None)


def barrier(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], env: DistEnv) -> list[float]:
    """Sum a few floats over the gang (float64 on CPU: exact for counts)."""
    if not env.distributed:
        return list(values)
    device = env.device if env.backend == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(x) for x in tensor.cpu()]


def all_reduce_max(values: list[float], env: DistEnv) -> list[float]:
    if not env.distributed:
        return list(values)
    device = env.device if env.backend == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [float(x) for x in tensor.cpu()]


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    if not env.distributed:
        return [obj]
    gathered: list[Any] = [None] * env.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(env: DistEnv) -> None:
    """Leave the process group cleanly (a barrier first: gloo aborts otherwise)."""
    if env.distributed and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
