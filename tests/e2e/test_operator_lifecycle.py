"""The operator as a real process against the real control plane: a FineTuneJob's life,
driven through kubectl as a user would (KWOK plays the kubelets; tests play the trainer)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubetune.devcluster import simulate
from kubetune.devcluster.testing import Cluster, wait_until
from tests.e2e.operator_helpers import (  # noqa: F401  (fixtures)
    Operators,
    apply,
    condition,
    events,
    finish_pod,
    finish_validation,
    iter_owned,
    job_status,
    manifest,
    ns_fixture,
    operator_fixture,
    operators_fixture,
    patch_job,
    pods,
    start_running,
    wait_phase,
    worker_pods,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}


def test_job_runs_with_the_right_pods_in_a_restricted_namespace(
    cluster: Cluster, ns: str, operator: Operators
) -> None:
    apply(cluster, manifest("ft", ns))
    status = wait_phase(cluster, ns, "ft", "Validating")
    assert status["progress"]["summary"] == "validating"
    (vpod,) = pods(cluster, ns, "ft", role="validation")
    vres = vpod["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in vres, "validation asks for no GPU"
    assert vpod["spec"]["containers"][0]["command"][-1] == "--validate-only"
    assert not worker_pods(cluster, ns, "ft")

    finish_validation(cluster, ns, "ft")
    status = wait_phase(cluster, ns, "ft", "Running")
    assert status["attempts"] == 1 and status["gpus"] == 16
    assert condition(status, "Validated")["status"] == "True"
    assert condition(status, "Admitted")["reason"] == "GangScheduled"

    gang = worker_pods(cluster, ns, "ft")
    assert [p["metadata"]["name"] for p in gang] == ["ft-a1-0", "ft-a1-1"]
    uid = cluster.kubectl("get", "ftj", "ft", "-o", "jsonpath={.metadata.uid}", namespace=ns).stdout
    for rank, pod in enumerate(gang):
        spec = pod["spec"]
        c = spec["containers"][0]
        cmd = c["command"]
        assert cmd[:3] == ["python", "-m", "kubetune_trainer.launch"]
        assert cmd[-2:] == ["-m", "kubetune_trainer"]
        assert f"--node-rank={rank}" in cmd and "--nnodes=2" in cmd
        assert "--nproc-per-node=8" in cmd
        assert f"--master-addr=ft-0.ft.{ns}.svc" in cmd
        assert f"--rdzv-id={uid}-1" in cmd
        env = env_of(pod)
        assert env["KUBETUNE_CONFIG"]["value"] == "/etc/kubetune/job.json"
        assert env["KUBETUNE_ATTEMPT"]["value"] == "1"
        assert env["KUBETUNE_OUTPUT_DIR"]["value"]
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
        res = c["resources"]
        assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "8"
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        assert not spec.get("schedulingGates"), "gates removed once the gang existed"
        assert spec["nodeName"].startswith("kwok-gpu-")
        labels = pod["metadata"]["labels"]
        assert labels["kubetune.io/rank"] == str(rank)
        assert labels["kubetune.io/attempt"] == "1"
        (owner,) = pod["metadata"]["ownerReferences"]
        assert owner["kind"] == "FineTuneJob" and owner["uid"] == uid and owner["controller"]
    svc = json.loads(cluster.kubectl("get", "svc", "ft", "-o", "json", namespace=ns).stdout)
    assert svc["spec"]["clusterIP"] == "None"
    cm = json.loads(cluster.kubectl("get", "cm", "ft-config", "-o", "json", namespace=ns).stdout)
    resolved = json.loads(cm["data"]["job.json"])
    assert resolved["derived"]["worldSize"] == 16 and resolved["uid"] == uid
    (vpod,) = pods(cluster, ns, "ft", role="validation")
    assert vpod["status"]["phase"] == "Succeeded", "kept (Completed) for its logs"

    table = cluster.kubectl("get", "ftj", "ft", namespace=ns).stdout
    assert "Running" in table and "16" in table
    reasons = [e["reason"] for e in events(cluster, ns, "ft")]
    for reason in ("Validating", "Queued", "Running"):
        assert reason in reasons
    queued = next(e for e in events(cluster, ns, "ft") if e["reason"] == "Queued")
    assert queued["message"].startswith("validation passed; created 2 pods (16 GPUs)")

    for pod in gang:
        finish_pod(cluster, ns, pod["metadata"]["name"], 0)
    status = wait_phase(cluster, ns, "ft", "Succeeded")
    assert status["completionTime"] and status["outputUri"] == "s3://results/ft"
    assert status["progress"]["summary"] == "done"


def test_progress_appears_in_status(cluster: Cluster, ns: str, operator: Operators) -> None:
    start_running(cluster, ns, "prog")
    rank0, rank1 = worker_pods(cluster, ns, "prog")
    operator.progress.serve(rank1, step=1, totalSteps=1)  # must not be used: not rank 0
    operator.progress.serve(
        rank0,
        step=120,
        totalSteps=300,
        epoch=0.4,
        loss=1.5,
        tokensPerSecond=12000.0,
        etaSeconds=360,
        lastCheckpointStep=100,
        lastCheckpointPath="s3://results/prog/checkpoints/step-100",
    )
    # The checkpoint may land one status write after the step (seen once in a loaded CI run):
    # wait for both, then check them.
    status = wait_until(
        lambda: (
            (s := job_status(cluster, ns, "prog")).get("progress", {}).get("step") == 120
            and "lastCheckpoint" in s
            and s
        ),
        timeout=20,
        what="progress and the last checkpoint in status",
    )
    progress = status["progress"]
    assert progress["summary"] == "120/300 (40%)"
    assert progress["loss"] == 1.5 and progress["totalSteps"] == 300
    assert progress["lastUpdateTime"]
    assert status["lastCheckpoint"]["step"] == 100
    assert "120/300 (40%)" in cluster.kubectl("get", "ftj", "prog", namespace=ns).stdout
    operator.progress.serve(rank0, step=150, totalSteps=300)
    wait_until(
        lambda: job_status(cluster, ns, "prog")["progress"]["step"] == 150,
        timeout=20,
        what="progress to follow the trainer",
    )


def test_retryable_failure_replaces_the_whole_gang(
    cluster: Cluster, ns: str, operator: Operators
) -> None:
    start_running(cluster, ns, "retry")
    old = worker_pods(cluster, ns, "retry", attempt=1)
    operator.progress.serve(
        old[0],
        step=60,
        totalSteps=200,
        lastCheckpointStep=50,
        lastCheckpointPath="s3://results/retry/checkpoints/step-50",
    )
    wait_until(
        lambda: job_status(cluster, ns, "retry").get("lastCheckpoint", {}).get("step") == 50,
        timeout=20,
        what="checkpoint in status",
    )
    finish_pod(cluster, ns, "retry-a1-1", 75, message="NCCL watchdog timeout")
    new = wait_until(
        lambda: len(p := worker_pods(cluster, ns, "retry", attempt=2)) == 2 and p,
        timeout=30,
        what="the attempt-2 gang",
    )
    assert not worker_pods(cluster, ns, "retry", attempt=1), "the whole old gang is gone"
    assert env_of(new[0])["KUBETUNE_ATTEMPT"]["value"] == "2"
    status = wait_phase(cluster, ns, "retry", "Running")
    assert status["attempts"] == 2
    assert status["lastCheckpoint"]["step"] == 50
    messages = [e["message"] for e in events(cluster, ns, "retry") if e["reason"] == "Restarting"]
    assert messages and "checkpoint step 50" in messages[0]
    assert "NCCL watchdog timeout" in messages[0]
    cm = json.loads(cluster.kubectl("get", "cm", "retry-config", "-o", "json", namespace=ns).stdout)
    assert json.loads(cm["data"]["job.json"])["attempt"] == 2


def test_permanent_failure_fails_with_the_trainers_message(
    cluster: Cluster, ns: str, operator: Operators
) -> None:
    start_running(cluster, ns, "nan")
    finish_pod(cluster, ns, "nan-a1-0", 79, message="loss is NaN at step 812")
    status = wait_phase(cluster, ns, "nan", "Failed", timeout=30)
    failed = condition(status, "Failed")
    assert failed["reason"] == "NumericalDivergence"
    assert "loss is NaN at step 812" in failed["message"]
    assert status["attempts"] == 1
    wait_until(
        lambda: all(p["status"]["phase"] != "Running" for p in worker_pods(cluster, ns, "nan")),
        timeout=30,
        what="the other rank stopped",
    )


def test_bad_dataset_fails_in_validation_without_gpu_pods(
    cluster: Cluster, ns: str, operator: Operators
) -> None:
    apply(cluster, manifest("baddata", ns))
    finish_validation(
        cluster, ns, "baddata", 65, message="train.jsonl line 3: 'messages' must be a list"
    )
    status = wait_phase(cluster, ns, "baddata", "Failed", timeout=20)
    validated = condition(status, "Validated")
    assert validated["status"] == "False" and validated["reason"] == "InvalidData"
    assert "line 3: 'messages' must be a list" in validated["message"]
    assert not worker_pods(cluster, ns, "baddata"), "no GPU pod was ever created"
    assert "failed: InvalidData" in cluster.kubectl("get", "ftj", "baddata", namespace=ns).stdout


def test_node_loss_restarts_the_gang(cluster: Cluster, ns: str, operator: Operators) -> None:
    start_running(cluster, ns, "nodeloss")
    node = worker_pods(cluster, ns, "nodeloss")[0]["spec"]["nodeName"]
    kw: dict[str, Any] = {"kubeconfig": cluster.kubeconfig, "kubectl": cluster.kubectl_path}
    simulate.set_node_ready(node, False, **kw)
    try:
        wait_until(
            lambda: (
                condition(job_status(cluster, ns, "nodeloss"), "Restarting").get("reason")
                == "NodeLost"
                or job_status(cluster, ns, "nodeloss").get("attempts") == 2
            ),
            timeout=30,
            what="NodeLost restart",
        )
        status = wait_phase(cluster, ns, "nodeloss", "Running", timeout=40)
        assert status["attempts"] == 2
        placed = {p["spec"]["nodeName"] for p in worker_pods(cluster, ns, "nodeloss", attempt=2)}
        assert node not in placed, "the new gang avoids the NotReady node"
    finally:
        simulate.set_node_ready(node, True, **kw)


def test_suspend_and_resume(cluster: Cluster, ns: str, operator: Operators) -> None:
    start_running(cluster, ns, "pause")
    patch_job(cluster, ns, "pause", {"spec": {"runPolicy": {"suspend": True}}})
    status = wait_phase(cluster, ns, "pause", "Suspended", timeout=30)
    assert condition(status, "Suspended")["status"] == "True"
    wait_until(lambda: not worker_pods(cluster, ns, "pause"), timeout=30, what="pods removed")
    patch_job(cluster, ns, "pause", {"spec": {"runPolicy": {"suspend": False}}})
    status = wait_phase(cluster, ns, "pause", "Running", timeout=30)
    assert status["attempts"] == 1, "a suspension is not a failure"
    assert [p["metadata"]["name"] for p in worker_pods(cluster, ns, "pause")] == [
        "pause-a1-0",
        "pause-a1-1",
    ]


def test_deletion_leaves_no_orphans(cluster: Cluster, ns: str, operator: Operators) -> None:
    start_running(cluster, ns, "gone")
    assert set(iter_owned(cluster, ns, "gone")) >= {
        "pods/gone-a1-0",
        "pods/gone-a1-1",
        "configmaps/gone-config",
        "services/gone",
    }
    cluster.kubectl("delete", "ftj", "gone", "--wait=true", "--timeout=30s", namespace=ns)
    wait_until(
        lambda: not list(iter_owned(cluster, ns, "gone")),
        timeout=60,
        what="garbage collection of the job's objects",
    )


def test_gang_larger_than_free_gpus_is_reported_and_holds_nothing(
    cluster: Cluster, ns: str, operator: Operators
) -> None:
    # 5 pods x 8 GPUs = 40 > the 32 GPUs of the cluster: 4 pods could be placed, not 5.
    apply(
        cluster,
        manifest(
            "huge",
            ns,
            resources={"nodes": 5},
            hyperparameters={"globalBatchSize": 80, "microBatchSize": 2},
        ),
    )
    finish_validation(cluster, ns, "huge")
    wait_until(
        lambda: len(worker_pods(cluster, ns, "huge")) == 5,
        timeout=20,
        what="the gang of 5",
    )
    status = wait_until(
        lambda: (
            condition(s := job_status(cluster, ns, "huge"), "Admitted").get("reason")
            == "GangUnschedulable"
            and s
        ),
        timeout=40,
        what="GangUnschedulable",
    )
    admitted = condition(status, "Admitted")
    assert admitted["status"] == "False"
    # Admission knew before the scheduler: 4 of the 5 pods fit on this cluster, ever.
    assert "can never hold the whole gang at once: 4 of its 5 pods" in admitted["message"]
    assert status["phase"] == "Queued" and status["attempts"] == 1
    wait_until(lambda: not worker_pods(cluster, ns, "huge"), timeout=30, what="the gang released")
    reasons = {e["reason"] for e in events(cluster, ns, "huge")}
    assert {"GangNeverFits", "GangUnschedulable"} <= reasons


def test_gangs_that_do_not_fit_together_never_hold_part_of_one(
    cluster: Cluster, ns: str, operator: Operators
) -> None:
    """Two jobs of 3 x 8 GPUs on 4 nodes of 8 GPUs (issue 9 item 14): while one runs, the
    other is held back whole -- none of its pods binds (holding GPUs idle) -- and runs as
    soon as the first is done."""
    big = {
        "resources": {"nodes": 3},
        "hyperparameters": {"globalBatchSize": 48, "microBatchSize": 2},
    }
    start_running(cluster, ns, "first", **big)
    apply(cluster, manifest("second", ns, **big))
    finish_validation(cluster, ns, "second")
    status = wait_until(
        lambda: (
            condition(s := job_status(cluster, ns, "second"), "Admitted").get("reason")
            == "WaitingForCapacity"
            and s
        ),
        timeout=30,
        what="WaitingForCapacity",
    )
    assert "1 of 3 pods" in condition(status, "Admitted")["message"]
    assert status["progress"]["summary"] == "queued: waiting for room (1/3 fit)"
    for _ in range(6):  # the scheduler has seen none of them: none binds
        second = worker_pods(cluster, ns, "second")
        assert len(second) == 3 and all(p["spec"].get("schedulingGates") for p in second)
        assert not [p for p in second if p["spec"].get("nodeName")]
        time.sleep(1)
    for rank in range(3):
        finish_pod(cluster, ns, f"first-a1-{rank}", 0)
    wait_phase(cluster, ns, "first", "Succeeded", timeout=30)
    wait_phase(cluster, ns, "second", "Running", timeout=60)
    assert job_status(cluster, ns, "second")["attempts"] == 1, "never released, never retried"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The operator's metrics as {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_follow_a_job_lifecycle(cluster: Cluster, ns: str, operator: Operators) -> None:
    """Values only a job's life produces (the names alone exist from start-up)."""
    running = ("kubetune_job_transitions_total", (("phase", "Running"),))
    to_running = ("kubetune_job_time_to_running_seconds_count", ())
    gpu_seconds = ("kubetune_gpu_allocated_seconds_total", (("namespace", ns), ("queue", "")))
    before = _samples(operator.leader.metrics())
    start_running(cluster, ns, "metered")

    def grown() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        now = _samples(operator.leader.metrics())
        ok = all(now.get(k, 0.0) > before.get(k, 0.0) for k in (running, to_running, gpu_seconds))
        return now if ok else None

    after = wait_until(grown, timeout=60, what="lifecycle metrics to grow")
    assert after[running] >= before.get(running, 0.0) + 1
    assert after[("kubetune_jobs", (("namespace", ns), ("phase", "Running")))] >= 1
    requests = [
        v for (name, _), v in after.items() if name == "kubetune_operator_api_requests_total"
    ]
    assert sum(requests) > 0
