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

import pytest

from kubetune.devcluster.nodeagent import TAINT_KEY
from kubetune.devcluster.testing import wait_until
from tests.e2e import operator_helpers as helpers
from tests.e2e.real_pods.conftest import RealCluster
from tests.e2e.real_pods.jobs import (
    REAL_POOL,
    apply_claims,
    check_lora_outputs,
    lora_manifest,
    print_pod_logs,
    shared_operator_paused,
    write_tiny_inputs,
)

pytest.importorskip("torch")

JOB = "real-lora"
#: Optimizer steps: about a minute of training for two CPU ranks on a 2-core machine.
MAX_STEPS = 60
CHECKPOINT_STEPS = 5

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
    with shared_operator_paused():
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


def test_real_lora_job_restarts_from_checkpoint_and_succeeds(
    real_cluster: RealCluster, real_operator: helpers.OperatorProcess, namespace: str
) -> None:
    cluster = real_cluster.cluster
    t0 = time.monotonic()
    write_tiny_inputs(real_cluster)
    output = real_cluster.pvc_dir("ckpt") / JOB
    apply_claims(real_cluster, namespace, ("models", "data", "ckpt"))
    helpers.apply(
        cluster,
        lora_manifest(JOB, namespace, max_steps=MAX_STEPS, checkpoint_steps=CHECKPOINT_STEPS),
    )

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
        print_pod_logs(real_cluster, namespace)
        raise
    wall = time.monotonic() - t0
    print(f"real-pod LoRA job: {wall:.1f}s from apply to Succeeded")

    assert final["attempts"] == 2
    assert final["lastCheckpoint"]["step"] >= checkpoint
    assert final["progress"]["step"] == MAX_STEPS
    rank0 = real_cluster.pod_logs(namespace, f"{JOB}-a2-0")
    assert "resumed from" in rank0, rank0[-3000:]
    check_lora_outputs(output, MAX_STEPS)
    assert Path(output / "checkpoints").is_dir()
