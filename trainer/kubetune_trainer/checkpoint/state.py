"""What a checkpoint holds besides the engine's model/optimizer/scheduler state.

- ``rng-rank<N>.pt``: Python, NumPy, torch CPU and CUDA RNG states of each rank
  (dropout masks after a resume are the ones an uninterrupted run would have drawn);
- ``trainer_state.json``: step, counters, the base-model evaluation, the data report
  and the world size; the data position is the step itself (the batch schedule is a
  pure function of seed, epoch and step), so no data-loader state is needed;
- ``base_eval_examples.json`` (LM objectives): the base model's summed NLL and target
  tokens of every held-out example, for the evaluation gates' confidence intervals (kept
  out of ``trainer_state.json`` so that stays readable; at most
  ``MAX_HELD_OUT_EXAMPLES`` rows, larger sets keep none);
- ``reference_logps.pt`` (DPO): the precomputed reference log-probabilities.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

TRAINER_STATE = "trainer_state.json"
BASE_EVAL_EXAMPLES = "base_eval_examples.json"
#: Held-out examples whose per-example values are kept (and bootstrapped); beyond it the
#: held-out gates fall back to point estimates. Bounds the checkpoint file (under 1 MB)
#: and the pure-Python bootstrap (measured: ~15 s per metric for 1000 resamples of 20k).
MAX_HELD_OUT_EXAMPLES = 20_000
log = logging.getLogger(__name__)


#: Version of the RNG file layout (plain tensors, ints, floats, lists, strings and None:
#: loadable with ``torch.load(weights_only=True)``, so a file planted on the shared output
#: volume cannot run code in the trainer).
RNG_FORMAT = 2


def rng_file(directory: Path, rank: int) -> Path:
    return directory / f"rng-rank{rank}.pt"


def capture_rng() -> dict[str, Any]:
    """The RNG states as tensors and plain values only (no NumPy arrays, no tuples of
    arbitrary objects), so :func:`load_rng` can refuse everything else."""
    version, internal, gauss_next = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "format": RNG_FORMAT,
        "python": {
            "version": int(version),
            "state": torch.tensor(list(internal), dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "bit_generator": str(np_name),
            "key": torch.from_numpy(np.asarray(np_keys, dtype=np.int64).copy()),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng(state: dict[str, Any]) -> None:
    if state.get("format") != RNG_FORMAT:
        raise ValueError(f"unknown RNG state format {state.get('format')!r}")
    py = state["python"]
    gauss = py["gauss_next"]
    random.setstate(
        (
            int(py["version"]),
            tuple(int(v) for v in py["state"].tolist()),
            None if gauss is None else float(gauss),
        )
    )
    npst = state["numpy"]
    np.random.set_state(
        (
            str(npst["bit_generator"]),
            npst["key"].numpy().astype(np.uint32),
            int(npst["pos"]),
            int(npst["has_gauss"]),
            float(npst["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng(directory: Path, rank: int) -> None:
    torch.save(capture_rng(), rng_file(directory, rank))


def load_rng(directory: Path, rank: int) -> bool:
    """Restore this rank's RNG states from a checkpoint; False (the caller re-seeds) when the
    file is missing or not a plain RNG document (an older layout, or anything that would
    need unpickling arbitrary objects: ``weights_only=True`` refuses it)."""
    path = rng_file(directory, rank)
    if not path.exists():
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        restore_rng(state)
    except (pickle.UnpicklingError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring RNG state %s (%s); re-seeding instead", path, exc)
        return False
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
    #: [summed NLL, target tokens] per held-out example of the base model, in example order
    base_eval_examples: list[list[float]] | None = None
    last_loss: float | None = None
    nonfinite_streak: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        scalars = asdict(replace(self, base_eval_examples=None))
        del scalars["base_eval_examples"]
        (directory / TRAINER_STATE).write_text(json.dumps(scalars, indent=2, default=str))
        if self.base_eval_examples is not None:
            compact = json.dumps(self.base_eval_examples, separators=(",", ":"))
            (directory / BASE_EVAL_EXAMPLES).write_text(compact)

    @classmethod
    def load(cls, directory: Path) -> TrainerState:
        data = json.loads((directory / TRAINER_STATE).read_text())
        known = {
            k: v
            for k, v in data.items()
            if k in cls.__dataclass_fields__ and k != "base_eval_examples"
        }
        state = cls(**known)
        state.base_eval_examples = load_eval_examples(directory / BASE_EVAL_EXAMPLES)
        return state


def load_eval_examples(path: Path) -> list[list[float]] | None:
    """The base model's per-example held-out values, or None (the gates then use point
    estimates) when the file is missing (older checkpoints) or not [[nll, tokens], ...]."""
    if not path.exists():
        return None
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s (%s)", path, exc)
        return None
    if (
        not isinstance(rows, list)
        or len(rows) > MAX_HELD_OUT_EXAMPLES
        or not all(
            isinstance(row, list)
            and len(row) == 2
            and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in row
            )
            for row in rows
        )
    ):
        log.warning("ignoring %s: not a list of [nll, tokens] rows", path)
        return None
    return [[float(v) for v in row] for row in rows]
