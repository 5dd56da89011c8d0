"""What the real-pod e2e tests share: the real pool's selector and toleration, inputs on the
agent's PVC host directories, claims, the shared e2e operator paused, logs on failure, and
the output artifacts of a finished LoRA job."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from kubetune.devcluster.nodeagent import NODE_POOL, TAINT_KEY
from kubetune.devcluster.nodeagent.claims import claim_manifests
from tests.e2e import operator_helpers as helpers
from tests.e2e.real_pods.conftest import RealCluster

REAL_POOL = {"kubetune.io/node-pool": NODE_POOL}
TOLERATION = {"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}
#: what a finished LoRA job leaves on its output volume
LORA_OUTPUTS = (
    "adapter_model.safetensors",
    "adapter_config.json",
    "README.md",
    "eval_results.json",
    "train_log.jsonl",
    "lineage.json",
)


@contextlib.contextmanager
def shared_operator_paused() -> Iterator[None]:
    """Stop the shared e2e operator (if running) meanwhile: two cluster-wide operators would
    both manage the job."""
    shared = helpers._SESSION.get("operators")
    helpers.stop_shared_operator()
    try:
        yield
    finally:
        if shared is not None:
            shared.ensure_one()


def write_tiny_inputs(real: RealCluster) -> None:
    """A tiny Llama (tokenizer trained locally) and a chat dataset on the PVC host dirs:
    ``pvc://models/tiny-llama``, ``pvc://data/train.jsonl``."""
    from kubetune_trainer.assets.sample_data import chat_rows, corpus_from_rows, write_jsonl
    from kubetune_trainer.models.tiny import TinyModelSpec, build_tiny_model, default_corpus

    model = real.pvc_dir("models") / "tiny-llama"
    if not (model / "config.json").exists():
        corpus = default_corpus() + corpus_from_rows(chat_rows(200, seed=11))
        spec = TinyModelSpec(family="llama", vocab_size=512, hidden_size=64, intermediate_size=128)
        build_tiny_model(model, spec, corpus)
    write_jsonl(chat_rows(64, seed=1, max_items=8), real.pvc_dir("data") / "train.jsonl")
    for path in [model, *model.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def apply_claims(real: RealCluster, namespace: str, claims: Iterable[str]) -> None:
    """A pre-bound PersistentVolume and claim per name, on the agent's host directories."""
    docs = [d for c in claims for d in claim_manifests(c, namespace, real.pvc_dir(c))]
    real.cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    )


def print_pod_logs(real: RealCluster, *namespaces: str, lines: int = 40) -> None:
    """The last lines of every agent pod log of ``namespaces`` (on a failure)."""
    for ns in namespaces:
        for log in sorted((real.agent_dir / "logs").glob(f"{ns}_*.log")):
            print(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-lines:]))


def check_lora_outputs(output: Path, max_steps: int) -> None:
    """The adapter, model card, metrics and a train log up to ``max_steps``."""
    for name in LORA_OUTPUTS:
        assert (output / name).is_file(), sorted(p.name for p in output.iterdir())
    steps = [
        json.loads(line).get("step")
        for line in (output / "train_log.jsonl").read_text().splitlines()
    ]
    assert max(s for s in steps if s is not None) == max_steps
    assert "lora" in (output / "README.md").read_text().lower()


def lora_manifest(
    name: str, namespace: str, *, max_steps: int, checkpoint_steps: int
) -> dict[str, Any]:
    """A 2-pod LoRA job on the real pool over :func:`write_tiny_inputs`' model and data."""
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "method": "lora",
            "model": {"uri": "pvc://models/tiny-llama"},
            "dataset": {
                "train": "pvc://data/train.jsonl",
                "format": "chat",
                "maxSeqLength": 128,
                "evalSplit": 0.1,
            },
            "hyperparameters": {
                "maxSteps": max_steps,
                "globalBatchSize": 4,
                "microBatchSize": 2,
                "learningRate": 1e-3,
                "warmupRatio": 0.0,
            },
            "resources": {
                "nodes": 2,
                "gpusPerNode": 1,
                "cpu": "1",
                "memory": "2Gi",
                "nodeSelector": REAL_POOL,
                "tolerations": [TOLERATION],
            },
            "checkpoint": {"intervalSteps": checkpoint_steps},
            "output": {"uri": f"pvc://ckpt/{name}"},
            "env": [
                {"name": "OMP_NUM_THREADS", "value": "1"},
                {"name": "TOKENIZERS_PARALLELISM", "value": "false"},
            ],
            "runPolicy": {"backoffLimit": 3},
        },
    }
