"""Checkpoint RNG state and lineage (issue 9, findings 7 and 11): the RNG file is loaded
with ``weights_only=True`` (a file planted on the shared volume cannot run code), resume
stays exact, and ``lineage.json`` never carries user env values."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kubetune_trainer.checkpoint.state import load_rng, rng_file, save_rng
from kubetune_trainer.outputs.lineage import build_lineage


def draws() -> tuple[Any, ...]:
    return (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.standard_normal(),
        torch.rand(4).tolist(),
    )


def test_rng_round_trip_is_exact_and_weights_only(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in both generators
    np.random.standard_normal()
    save_rng(tmp_path, 0)
    expected = draws()
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    assert load_rng(tmp_path, 0)
    assert draws() == expected
    # the file itself is plain: the safe loader reads it
    torch.load(rng_file(tmp_path, 0), weights_only=True)


class _Planted:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (os.environ["PLANTED_MARKER"],))


def test_a_planted_pickle_is_not_executed(tmp_path: Path, monkeypatch: Any) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PLANTED_MARKER", str(marker))
    torch.save({"format": 2, "python": _Planted()}, rng_file(tmp_path, 0))
    assert load_rng(tmp_path, 0) is False, "refused: the caller re-seeds"
    assert not marker.exists(), "the pickle's payload must never run"


def test_an_old_layout_is_ignored_not_fatal(tmp_path: Path) -> None:
    state = {"python": random.getstate(), "numpy": np.random.get_state()}
    torch.save(state, rng_file(tmp_path, 0))
    assert load_rng(tmp_path, 0) is False


def test_lineage_carries_no_env() -> None:
    resolved = {
        "name": "j",
        "spec": {"method": "lora", "env": [{"name": "DEBUG_LEVEL", "value": "hunter2-9f2"}]},
    }
    job = {"name": "j", "configHash": "h", "resolvedJob": resolved}
    lineage = build_lineage(
        job=job, base_model={}, datasets=[], training={}, evaluation={}, outputs={}
    )
    assert "hunter2" not in repr(lineage) and "DEBUG_LEVEL" not in repr(lineage)
    assert lineage["job"]["resolvedJob"]["spec"] == {"method": "lora"}
    assert job["resolvedJob"]["spec"]["env"], "the caller's document is not mutated"
