"""Shared setup of the trainer benchmarks: import paths, cache, tiny models, manifests."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

CACHE = Path(os.environ.get("KUBETUNE_BENCH_CACHE", REPO / ".cache" / "kubetune" / "bench"))
RESULTS = Path(__file__).resolve().parent / "results"


def manifest(
    method: str,
    model: Path,
    train: Path,
    out: Path,
    *,
    fmt: str = "chat",
    eval_data: Path | None = None,
    hyper: dict[str, Any] | None = None,
    dataset: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    ds: dict[str, Any] = {"train": str(train), "format": fmt, "maxSeqLength": 1024}
    if eval_data is not None:
        ds["eval"] = str(eval_data)
    else:
        ds["evalSplit"] = 0.0
    ds.update(dataset or {})
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": f"bench-{method}", "namespace": "bench"},
        "spec": {
            "method": method,
            "model": {"uri": str(model)},
            "dataset": ds,
            "hyperparameters": {"warmupRatio": 0.0, **(hyper or {})},
            "resources": {"nodes": 1, "gpusPerNode": 1},
            "checkpoint": {"intervalSeconds": 86400},
            "output": {"uri": str(out)},
            **spec,
        },
    }


def train(doc: dict[str, Any], workdir: Path) -> Any:
    """Run our trainer in this process; returns its RunResult."""
    from kubetune.api import FineTuneJob
    from kubetune.api.resolve import resolve
    from kubetune.contract import TrainerPaths
    from kubetune_trainer.config import parse_document
    from kubetune_trainer.run import run_training

    workdir.mkdir(parents=True, exist_ok=True)
    resolved = resolve(FineTuneJob.model_validate(doc), nodes=1, nproc_per_node=1)
    text = resolved.model_dump_json(by_alias=True)
    (workdir / "job.json").write_text(text)
    out = Path(doc["spec"]["output"]["uri"])
    paths = TrainerPaths(
        config=workdir / "job.json",
        output_dir=out,
        progress_file=out / "progress.json",
        metrics_port=0,
    )
    return run_training(parse_document(text), paths)


def train_log(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def save_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    import platform

    import torch

    data = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        **data,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    return path
