"""The operator drives the real trainer end to end on the node agent's real pods.

A 2-pod LoRA FineTuneJob (one CPU trainer process per pod, ``gpusPerNode: 1`` on nodes that
advertise ``nvidia.com/gpu``): the validation pod and the gang really run; the ranks meet
through the headless Service name; the operator reads real ``/progress`` from rank 0's pod
IP; deleting one pod mid-run makes the gang restart (attempt 2) from the last checkpoint; the
job Succeeds with the adapter, the model card and metrics on the output volume.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetune.devcluster.nodeagent import TAINT_KEY
from kubetune.devcluster.nodeagent.claims import claim_manifests
from kubetune.devcluster.testing import wait_until
from tests.e2e import operator_helpers as helpers
from tests.e2e.real_pods.conftest import RealCluster

pytest.importorskip("torch")

JOB = "real-lora"
#: Optimizer steps: about a minute of training for two CPU ranks on a 2-core machine.
MAX_STEPS = 60
CHECKPOINT_STEPS = 5
REAL_POOL = {"kubetune.io/node-pool": "real"}
TOLERATION = {"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}

#: The operator for real pods: the default progress URL (the real pod IP and port), real
#: nodes for validation, the real-pod taint allowed, time to checkpoint on SIGTERM.
OPERATOR_ENV = {
    "KUBETUNE_OPERATOR_PROGRESS_URL_TEMPLATE": "http://{pod_ip}:{port}/progress",
    "KUBETUNE_OPERATOR_PROGRESS_TIMEOUT_SECONDS": "3",
    "KUBETUNE_OPERATOR_ALLOWED_TOLERATION_KEYS": TAINT_KEY,
    "KUBETUNE_OPERATOR_VALIDATION_NODE_SELECTOR": json.dumps(REAL_POOL),
    "KUBETUNE_OPERATOR_TERMINATION_GRACE_PERIOD_SECONDS": "20",
    "KUBETUNE_OPERATOR_STARTUP_TIMEOUT_SECONDS": "120",
}


@pytest.fixture(scope="module")
def real_operator(
    real_cluster: RealCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[helpers.OperatorProcess]:
    """An operator process of its own (the shared e2e operator, if running, is paused: two
    cluster-wide operators would both manage the job)."""
    cluster = real_cluster.cluster
    shared = helpers._SESSION.get("operators")
    if shared is not None:
        shared.stop_all()
    workdir = tmp_path_factory.mktemp("real-operator")
    try:
        kubeconfig = helpers.install(cluster, workdir)
    except AssertionError:  # `kubectl wait` can race a just-created CRD's empty status
        time.sleep(2)
        kubeconfig = helpers.install(cluster, workdir)
    op = helpers.OperatorProcess(kubeconfig, workdir, "real", env=OPERATOR_ENV).start()
    try:
        op.wait_ready()
        yield op
    finally:
        op.stop()
        if shared is not None:
            shared.ensure_one()


def write_inputs(real: RealCluster) -> None:
    """A tiny Llama (tokenizer trained locally) and a chat dataset on the PVC host dirs."""
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


def manifest(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": JOB, "namespace": namespace},
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
                "maxSteps": MAX_STEPS,
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
            "checkpoint": {"intervalSteps": CHECKPOINT_STEPS},
            "output": {"uri": f"pvc://ckpt/{JOB}"},
            "env": [
                {"name": "OMP_NUM_THREADS", "value": "1"},
                {"name": "TOKENIZERS_PARALLELISM", "value": "false"},
            ],
            "runPolicy": {"backoffLimit": 3},
        },
    }


def test_real_lora_job_restarts_from_checkpoint_and_succeeds(
    real_cluster: RealCluster, real_operator: helpers.OperatorProcess, namespace: str
) -> None:
    cluster = real_cluster.cluster
    t0 = time.monotonic()
    write_inputs(real_cluster)
    output = real_cluster.pvc_dir("ckpt") / JOB
    for claim in ("models", "data", "ckpt"):
        docs = claim_manifests(claim, namespace, real_cluster.pvc_dir(claim))
        cluster.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}),
        )
    helpers.apply(cluster, manifest(namespace))

    def validated() -> str | None:
        status = helpers.job_status(cluster, namespace, JOB)
        verdict = helpers.condition(status, "Validated").get("status")
        return verdict if verdict in ("True", "False") else None

    try:
        assert wait_until(validated, timeout=180, interval=1, what="validation") == "True"
        # real progress from rank 0, and a checkpoint, before a pod is lost
        status = wait_until(
            lambda: (
                (s := helpers.job_status(cluster, namespace, JOB)).get("lastCheckpoint")
                and (s.get("progress") or {}).get("step", 0) >= CHECKPOINT_STEPS
                and s
            ),
            timeout=300,
            interval=1,
            what="a checkpoint and progress",
        )
        assert status["phase"] == "Running" and status["attempts"] == 1
        assert status["progress"]["totalSteps"] == MAX_STEPS
        first = helpers.worker_pods(cluster, namespace, JOB, attempt=1)
        assert {p["spec"]["nodeName"] for p in first} <= set(real_cluster.nodes)
        checkpoint = status["lastCheckpoint"]["step"]

        cluster.kubectl("delete", "pod", f"{JOB}-a1-1", "--wait=false", namespace=namespace)
        status = wait_until(
            lambda: (
                (s := helpers.job_status(cluster, namespace, JOB)).get("attempts", 0) >= 2 and s
            ),
            timeout=180,
            interval=1,
            what="attempt 2",
        )
        final = helpers.wait_phase(cluster, namespace, JOB, "Succeeded", timeout=600)
    except BaseException:
        print(real_operator.log_tail(80))
        for pod in sorted((real_cluster.agent_dir / "logs").glob(f"{namespace}_*.log")):
            print(f"--- {pod.name}\n" + "\n".join(pod.read_text().splitlines()[-40:]))
        raise
    wall = time.monotonic() - t0
    print(f"real-pod LoRA job: {wall:.1f}s from apply to Succeeded")

    assert final["attempts"] == 2
    assert final["lastCheckpoint"]["step"] >= checkpoint
    assert final["progress"]["step"] == MAX_STEPS
    rank0 = real_cluster.pod_logs(namespace, f"{JOB}-a2-0")
    assert "resumed from" in rank0, rank0[-3000:]
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "README.md",
        "eval_results.json",
        "train_log.jsonl",
        "lineage.json",
    ):
        assert (output / name).is_file(), sorted(p.name for p in output.iterdir())
    steps = [
        json.loads(line).get("step")
        for line in (output / "train_log.jsonl").read_text().splitlines()
    ]
    assert max(s for s in steps if s is not None) == MAX_STEPS
    assert "lora" in (output / "README.md").read_text().lower()
    assert Path(output / "checkpoints").is_dir()
