"""What a checkpoint holds besides the engine's model/optimizer/scheduler state.

- ``rng-rank<N>.pt``: Python, NumPy, torch CPU and CUDA RNG states of each rank
  (dropout masks after a resume are the ones an uninterrupted run would have drawn);
- ``trainer_state.json``: step, counters, the base-model evaluation, the data report
  and the world size; the data position is the step itself (the batch schedule is a
  pure function of seed, epoch and step), so no data-loader state is needed;
- ``reference_logps.pt`` (DPO): the precomputed reference log-probabilities.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

TRAINER_STATE = "trainer_state.json"


def rng_file(directory: Path, rank: int) -> Path:
    return directory / f"rng-rank{rank}.pt"


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng(directory: Path, rank: int) -> None:
    torch.save(capture_rng(), rng_file(directory, rank))


def load_rng(directory: Path, rank: int) -> bool:
    path = rng_file(directory, rank)
    if not path.exists():
        return False
    restore_rng(torch.load(path, weights_only=False))
    return True


@dataclass
class TrainerState:
    """Loop counters and results that must survive a restart."""

    step: int = 0
    tokens_seen: int = 0
    samples_seen: int = 0
    world_size: int = 1
    strategy: str = "ddp"
    config_hash: str = ""
    elapsed_seconds: float = 0.0
    base_eval: dict[str, float] | None = None
    last_loss: float | None = None
    nonfinite_streak: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        (directory / TRAINER_STATE).write_text(json.dumps(asdict(self), indent=2, default=str))

    @classmethod
    def load(cls, directory: Path) -> TrainerState:
        data = json.loads((directory / TRAINER_STATE).read_text())
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)
