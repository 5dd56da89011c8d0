"""Kueue preemption with the real trainer (issue 12): a low-priority LoRA job trains on the
real-pod nodes behind a 2-GPU ClusterQueue; a high-priority job takes its quota; the low job's
gang is stopped (the trainer checkpoints on SIGTERM), requeued with no pod, and once the
high job is done it comes back as the same attempt and really resumes from its checkpoint.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune.devcluster.kueue import KueueRunner
from kubetune.devcluster.testing import wait_until
from tests.e2e import operator_helpers as helpers
from tests.e2e.kueue.helpers import KueueEnv, quota_manifests
from tests.e2e.real_pods.conftest import RealCluster
from tests.e2e.real_pods.jobs import (
    apply_claims,
    lora_manifest,
    print_pod_logs,
    shared_operator_paused,
    write_tiny_inputs,
)
from tests.e2e.real_pods.test_real_training import OPERATOR_ENV

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

LOW, HIGH = "low-prio", "high-prio"


@pytest.fixture(scope="module")
def kueue_operator(
    real_cluster: RealCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KueueEnv, helpers.OperatorProcess]]:
    """Kueue, then an operator of our own that finds it (Kueue is detected at start); all of
    it gone again before the shared operator resumes."""
    cluster = real_cluster.cluster
    with shared_operator_paused():
        directory = Path(tempfile.mkdtemp(prefix="kubetune-e2e-kueue-real-"))
        runner = KueueRunner(cluster.dev, directory, cluster.binaries)
        try:
            state = runner.up(timeout=180, die_with_parent=True)
            workdir = tmp_path_factory.mktemp("kueue-real-operator")
            kubeconfig = helpers.install(cluster, workdir)
            op = helpers.OperatorProcess(kubeconfig, workdir, "kueue-real", env=OPERATOR_ENV)
            op.start()
            try:
                op.wait_ready()
                assert "Kueue integration on" in op.log_tail(200), op.log_tail(40)
                yield KueueEnv(cluster, runner, state), op
            finally:
                op.stop()
        finally:
            runner.down(purge=True)
            shutil.rmtree(directory, ignore_errors=True)


def test_preempted_real_job_resumes_from_its_checkpoint(
    real_cluster: RealCluster,
    kueue_operator: tuple[KueueEnv, helpers.OperatorProcess],
    namespace: str,
) -> None:
    kueue, operator = kueue_operator
    cluster = real_cluster.cluster
    write_tiny_inputs(real_cluster)
    apply_claims(real_cluster, namespace, ("models", "data", "ckpt"))
    for name, value in ((f"{namespace}-low", 10), (f"{namespace}-high", 1000)):
        kueue.apply(
            {
                "apiVersion": "scheduling.k8s.io/v1",
                "kind": "PriorityClass",
                "metadata": {"name": name},
                "value": value,
                "preemptionPolicy": "Never",
            }
        )
    kueue.apply(
        quota_manifests(
            namespace,
            cluster_queue=f"{namespace}-cq",
            local_queue="team",
            gpus=2,  # one 2-pod x 1-GPU job at a time
            preemption={"withinClusterQueue": "LowerPriority"},
        )
    )

    def job(name: str, priority: str, max_steps: int) -> dict[str, object]:
        doc = lora_manifest(name, namespace, max_steps=max_steps, checkpoint_steps=5)
        spec = doc["spec"]
        assert isinstance(spec, dict)
        spec["resources"]["priorityClassName"] = f"{namespace}-{priority}"
        spec["runPolicy"]["queueName"] = "team"
        return doc

    try:
        # Long enough that it cannot finish before it is preempted (5-10 steps/s here).
        helpers.apply(cluster, job(LOW, "low", max_steps=5000))
        wait_until(
            lambda: (
                (s := helpers.job_status(cluster, namespace, LOW)).get("lastCheckpoint")
                and s.get("phase") == "Running"
                and s
            ),
            timeout=300,
            interval=1,
            what="the low-priority job to train and checkpoint",
        )
        helpers.apply(cluster, job(HIGH, "high", max_steps=10))
        preempted = wait_until(
            lambda: (
                (s := helpers.job_status(cluster, namespace, LOW)).get("phase") == "Queued"
                and helpers.condition(s, "Admitted").get("reason") == "Preempted"
                and s
            ),
            timeout=240,
            interval=1,
            what="the low-priority job to be preempted",
        )
        wait_until(
            lambda: helpers.worker_pods(cluster, namespace, LOW) == [],
            timeout=60,
            interval=1,
            what="the preempted gang to stop",
        )
        assert "resumes from checkpoint step" in helpers.condition(preempted, "Admitted")["message"]
        helpers.wait_phase(cluster, namespace, HIGH, "Succeeded", timeout=400)
        # Re-admitted: the same attempt, and the trainer resumes from the checkpoint it wrote
        # when the preempted gang got SIGTERM.
        stopped = real_cluster.pod_logs(namespace, f"{LOW}-a1-0")
        final = re.findall(r"stopped by SIGTERM at step (\d+)/\d+; checkpoint (\S+) is", stopped)
        assert final, stopped[-3000:]
        step, checkpoint = int(final[-1][0]), final[-1][1]
        resumed_line = wait_until(
            lambda: re.search(
                r"resumed from \S*/" + re.escape(checkpoint) + r" \(step (\d+)\)",
                real_cluster.pod_logs(namespace, f"{LOW}-a1-0"),
            ),
            timeout=300,
            interval=1,
            what=f"the re-admitted gang to resume from {checkpoint}",
        )
        assert int(resumed_line.group(1)) == step
        resumed = wait_until(
            lambda: (
                (s := helpers.job_status(cluster, namespace, LOW)).get("phase") == "Running"
                and (s.get("progress") or {}).get("step", 0) > step
                and s
            ),
            timeout=300,
            interval=1,
            what="the low-priority job to train past its checkpoint",
        )
    except BaseException:
        print(operator.log_tail(80))
        print_pod_logs(real_cluster, namespace)
        raise
    assert resumed["attempts"] == 1, "a preemption is not a failed attempt"
    assert not helpers.condition(resumed, "Failed")
    assert any(e["reason"] == "Preempted" for e in helpers.events(cluster, namespace, LOW))
    print(f"preempted: checkpoint at step {step} on SIGTERM, resumed there")
