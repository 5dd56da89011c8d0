"""Two conflicting synthetic tasks for continual learning (tests, the benchmark).

Both map the same 24 words to one of the same 24 code words (promptCompletion rows
``"task <name>: <word> ="`` -> ``" <code>"``), through different random bijections. A tiny
model learns either mapping in a few dozen steps; training on B alone pulls the shared
word->code weights towards B's mapping and A's eval loss climbs (forgetting), which
replay and EWC/L2-SP are meant to limit.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from kubetune_trainer.assets.sample_data import write_jsonl

WORDS = [
    "apple", "river", "cloud", "stone", "lamp", "garden", "rocket", "violin",
    "pencil", "forest", "candle", "mirror", "engine", "window", "basket", "harbor",
    "planet", "ladder", "marble", "ticket", "bridge", "castle", "desert", "meadow",
]  # fmt: skip
CODES = [
    "zed", "kov", "mip", "tal", "rux", "bep", "qin", "lor", "fay", "dus", "gim", "hok",
    "jex", "nup", "pah", "sev", "tib", "vok", "wyn", "yal", "cor", "dax", "fen", "gup",
]  # fmt: skip


def mapping(task: str) -> dict[str, str]:
    """The task's bijection word -> code (a pure function of the task's name)."""
    codes = list(CODES)
    random.Random(f"continual-{task}").shuffle(codes)
    return dict(zip(WORDS, codes, strict=True))


def task_rows(task: str, count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` rows of ``task`` (words drawn uniformly, seeded)."""
    table = mapping(task)
    rng = random.Random(seed)
    words = [rng.choice(WORDS) for _ in range(count)]
    return [{"prompt": f"task {task}: {w} =", "completion": f" {table[w]}"} for w in words]


def corpus() -> list[str]:
    """Text covering both tasks, for the tiny model's tokenizer."""
    rows = task_rows("a", 200, 0) + task_rows("b", 200, 1)
    return [r["prompt"] + r["completion"] for r in rows] + [" ".join(WORDS), " ".join(CODES)]


def write_tasks(root: Path, train: int = 192, evaluate: int = 48) -> dict[str, Path]:
    """Train/eval JSONL of task a and task b under ``root`` (keys a_train, a_eval, ...)."""
    out: dict[str, Path] = {}
    for name, seed in (("a", 10), ("b", 20)):
        rows = task_rows(name, train + evaluate, seed)
        out[f"{name}_train"] = write_jsonl(rows[:train], root / f"{name}-train.jsonl")
        out[f"{name}_eval"] = write_jsonl(rows[train:], root / f"{name}-eval.jsonl")
    return out
