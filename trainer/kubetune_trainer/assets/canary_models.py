"""The models of the canary demo, test and benchmark (``kubetune dev canary``).

A tiny base model and a LoRA adapter trained on it by the real trainer: the candidate of
a ModelRollout is a model kubetune actually tuned. Lives with the trainer (it builds and
trains models); the harness in ``kubetune.devcluster.canary`` only receives the paths.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from kubetune.api import FineTuneJob
from kubetune.api.resolve import resolve
from kubetune_trainer.assets import sample_data as sd
from kubetune_trainer.models.tiny import TinyModelSpec, default_corpus, ensure_tiny_model

Log = Callable[[str], None]


def ensure_models(directory: Path, log: Log | None = None) -> tuple[Path, Path]:
    """Build the tiny base model and train a LoRA adapter on it with the real trainer (4
    steps, about half a minute on a CPU), once: later calls reuse the finished files.
    Returns (base model dir, adapter dir)."""
    say = log or (lambda _m: None)
    directory.mkdir(parents=True, exist_ok=True)
    base = directory / "base"
    adapter = directory / "adapter"
    if not (base / "kubetune_tiny.json").exists():
        say(f"building the tiny base model in {base}")
    corpus = default_corpus() + sd.corpus_from_rows(sd.chat_rows(200, seed=11))
    spec = TinyModelSpec(family="llama", vocab_size=512, hidden_size=64, intermediate_size=128)
    ensure_tiny_model(base, spec, corpus)
    if (adapter / "adapter_config.json").exists():
        return base, adapter
    say(f"training the candidate's LoRA adapter into {adapter}")
    _train_adapter(base, adapter, directory)
    return base, adapter


def _train_adapter(base: Path, adapter: Path, directory: Path) -> None:
    data = sd.write_jsonl(sd.chat_rows(64, seed=2, max_items=8), directory / "train.jsonl")
    staging = Path(tempfile.mkdtemp(prefix=".adapter-", dir=directory))
    doc = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "canary-tuned", "namespace": "local"},
        "spec": {
            "method": "lora",
            "model": {"uri": str(base)},
            "dataset": {"train": str(data), "format": "chat", "maxSeqLength": 128, "evalSplit": 0},
            "hyperparameters": {
                "maxSteps": 4,
                "globalBatchSize": 4,
                "microBatchSize": 2,
                "learningRate": 1e-2,
                "warmupRatio": 0.0,
            },
            "peft": {"lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
            "resources": {"nodes": 1, "gpusPerNode": 1},
            "checkpoint": {"intervalSeconds": 3600},
            "output": {"uri": str(staging / "out")},
        },
    }
    config = staging / "resolved.json"
    job = FineTuneJob.model_validate(doc)
    config.write_text(resolve(job, nodes=1, nproc_per_node=1).model_dump_json(by_alias=True))
    env = dict(
        os.environ,
        KUBETUNE_CONFIG=str(config),
        KUBETUNE_OUTPUT_DIR=str(staging / "out"),
        KUBETUNE_METRICS_PORT="0",
        KUBETUNE_TERMINATION_LOG=str(staging / "termination-log"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "kubetune_trainer"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"training the canary adapter failed:\n{proc.stderr[-3000:]}")
        shutil.rmtree(adapter, ignore_errors=True)
        (staging / "out").rename(adapter)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
