"""Shared helpers of the trainer tests: manifests, resolved documents, runs."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def manifest(
    method: str,
    model: Path | str,
    train: Path | str,
    fmt: str,
    output: Path | str,
    *,
    eval_data: Path | str | None = None,
    eval_split: float | None = 0.0,
    name: str = "test-job",
    hyper: dict[str, Any] | None = None,
    dataset: dict[str, Any] | None = None,
    **spec_extra: Any,
) -> dict[str, Any]:
    """A FineTuneJob manifest with small, fast defaults for CPU tests."""
    hp = {
        "maxSteps": 4,
        "globalBatchSize": 4,
        "microBatchSize": 2,
        "learningRate": 1e-3,
        "warmupRatio": 0.0,
    }
    hp.update(hyper or {})
    ds: dict[str, Any] = {"train": str(train), "format": fmt, "maxSeqLength": 256}
    if eval_data is not None:
        ds["eval"] = str(eval_data)
    elif eval_split is not None:
        ds["evalSplit"] = eval_split
    ds.update(dataset or {})
    spec: dict[str, Any] = {
        "method": method,
        "model": {"uri": str(model)},
        "dataset": ds,
        "hyperparameters": hp,
        "resources": {"nodes": 1, "gpusPerNode": 1},
        "checkpoint": {"intervalSeconds": 3600},
        "output": {"uri": str(output)},
    }
    for key, value in spec_extra.items():
        spec[key] = value
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": "test"},
        "spec": spec,
    }


def resolved_document(doc: dict[str, Any], nproc: int = 1) -> str:
    from kubetune.api import FineTuneJob
    from kubetune.api.resolve import resolve

    job = FineTuneJob.model_validate(copy.deepcopy(doc))
    return resolve(job, nodes=1, nproc_per_node=nproc).model_dump_json(by_alias=True)


def write_config(doc: dict[str, Any], path: Path, nproc: int = 1) -> Path:
    path.write_text(resolved_document(doc, nproc))
    return path


def trainer_env(config: Path, output: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "KUBETUNE_CONFIG": str(config),
            "KUBETUNE_OUTPUT_DIR": str(output),
            "KUBETUNE_METRICS_PORT": "0",
            "KUBETUNE_TERMINATION_LOG": str(output.parent / f"{output.name}.termination-log"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
        }
    )
    env.update(extra)
    return env


def run_trainer(
    config: Path, output: Path, *args: str, timeout: float = 300, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    """One trainer process (no torchrun)."""
    return subprocess.run(
        [PYTHON, "-m", "kubetune_trainer", *args],
        env=trainer_env(config, output, **extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def run_torchrun(
    config: Path, output: Path, nproc: int = 2, *args: str, timeout: float = 600, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    """``nproc`` trainer processes through torchrun (gloo on CPU)."""
    return subprocess.run(
        [
            PYTHON,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "kubetune_trainer",
            *args,
        ],
        env=trainer_env(config, output, **extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def train_log(output: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]


def train_in_process(doc: dict[str, Any], workdir: Path, nproc: int = 1) -> Any:
    """Run the trainer in this process (world size 1) and return its RunResult."""
    from kubetune.contract import TrainerPaths
    from kubetune_trainer.config import load_job
    from kubetune_trainer.run import run_training

    config = write_config(doc, workdir / "job.json", nproc)
    cfg = load_job(config)
    out = Path(doc["spec"]["output"]["uri"])
    paths = TrainerPaths(
        config=config, output_dir=out, progress_file=out / "progress.json", metrics_port=0
    )
    return run_training(cfg, paths)
