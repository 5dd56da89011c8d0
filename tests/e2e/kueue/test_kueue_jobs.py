"""FineTuneJobs behind real Kueue (issue 12): quota admission with no pod while waiting,
priority preemption that stops the gang and resumes it from its checkpoint, and cohort
borrowing and reclaim -- the operator (its least-privilege ServiceAccount) against Kueue
v0.19 built from source, on KWOK GPU nodes (4 x 8 GPUs).

Every job is one pod of 8 GPUs, so a 16-GPU ClusterQueue holds exactly two.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from kubetune.devcluster.testing import Cluster, wait_until
from tests.e2e.kueue.helpers import KueueEnv, quota_manifests
from tests.e2e.operator_helpers import (  # noqa: F401  (fixtures)
    Operators,
    apply,
    condition,
    events,
    finish_pod,
    finish_validation,
    job_status,
    manifest,
    ns_fixture,
    operator_fixture,
    operators_fixture,
    stop_shared_operator,
    wait_phase,
    worker_pods,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ONE_NODE = {"nodes": 1, "gpusPerNode": 8, "cpu": "8", "memory": "64Gi"}


@pytest.fixture(scope="module", autouse=True)
def kueue_operator(kueue: KueueEnv) -> Iterator[KueueEnv]:
    """The shared operator started before Kueue was installed knows nothing of it (Kueue is
    detected at startup): restart it now, and again after this module (Kueue goes away)."""
    stop_shared_operator()
    yield kueue
    stop_shared_operator()


def queued_job(name: str, ns: str, queue: str, **overrides: Any) -> dict[str, Any]:
    resources = {**ONE_NODE, **overrides.pop("resources", {})}
    return manifest(
        name,
        ns,
        resources=resources,
        runPolicy={"backoffLimit": 3, "schedulingTimeoutSeconds": 60, "queueName": queue},
        **overrides,
    )


def submit(cluster: Cluster, doc: dict[str, Any]) -> None:
    apply(cluster, doc)
    meta = doc["metadata"]
    finish_validation(cluster, meta["namespace"], meta["name"])


def workloads(cluster: Cluster, ns: str, job: str) -> list[dict[str, Any]]:
    out = cluster.kubectl(
        "get",
        "workloads.kueue.x-k8s.io",
        "-l",
        f"kubetune.io/job-name={job}",
        "-o",
        "json",
        namespace=ns,
    ).stdout
    return list(json.loads(out)["items"])


def queued_without_pods(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    status = wait_until(
        lambda: (
            (s := job_status(cluster, ns, name)).get("phase") == "Queued"
            and condition(s, "Admitted").get("reason") == "WaitingForQueue"
            and "insufficient" in condition(s, "Admitted").get("message", "")
            and s
        ),
        timeout=60,
        what=f"{name} waiting in its queue for quota",
    )
    assert worker_pods(cluster, ns, name) == [], "no pod (and no GPU) while queued"
    return dict(status)


def test_quota_admits_two_of_three_and_the_third_waits_without_pods(
    cluster: Cluster, operator: Operators, ns: str, kueue: KueueEnv
) -> None:
    kueue.apply(quota_manifests(ns, cluster_queue=f"{ns}-cq", local_queue="team", gpus=16))
    for name in ("q1", "q2"):
        submit(cluster, queued_job(name, ns, "team"))
        wait_phase(cluster, ns, name, "Running", timeout=90)
    (wl,) = workloads(cluster, ns, "q1")
    assert wl["spec"]["podSets"][0]["count"] == 1
    assert wl["metadata"]["ownerReferences"][0]["name"] == "q1"
    submit(cluster, queued_job("q3", ns, "team"))
    status = queued_without_pods(cluster, ns, "q3")
    assert status["progress"]["summary"].startswith("queued in team: ")
    # `kubectl get ftj` shows the queue and why it waits
    table = cluster.kubectl("get", "ftj", "q3", namespace=ns).stdout
    assert "team" in table and "queued in team" in table, table
    # q1 finishes: Kueue frees its quota once the operator marks the Workload Finished.
    (pod,) = worker_pods(cluster, ns, "q1")
    finish_pod(cluster, ns, pod["metadata"]["name"], 0)
    wait_phase(cluster, ns, "q1", "Succeeded", timeout=60)
    wait_until(
        lambda: any(
            c["type"] == "Finished" and c["status"] == "True"
            for c in workloads(cluster, ns, "q1")[0]["status"].get("conditions", [])
        ),
        timeout=30,
        what="q1's Workload to be Finished",
    )
    wait_phase(cluster, ns, "q3", "Running", timeout=90)


def test_higher_priority_preempts_and_the_preempted_job_resumes_from_its_checkpoint(
    cluster: Cluster, operator: Operators, ns: str, kueue: KueueEnv
) -> None:
    for name, value in ((f"{ns}-low", 100), (f"{ns}-high", 10000)):
        kueue.apply(
            {
                "apiVersion": "scheduling.k8s.io/v1",
                "kind": "PriorityClass",
                "metadata": {"name": name},
                "value": value,
                "preemptionPolicy": "Never",  # only Kueue preempts, not the scheduler
            }
        )
    kueue.apply(
        quota_manifests(
            ns,
            cluster_queue=f"{ns}-cq",
            local_queue="team",
            gpus=8,
            preemption={"withinClusterQueue": "LowerPriority"},
        )
    )
    submit(cluster, queued_job("low", ns, "team", resources={"priorityClassName": f"{ns}-low"}))
    wait_phase(cluster, ns, "low", "Running", timeout=90)
    (pod,) = worker_pods(cluster, ns, "low")
    operator.progress.serve(
        pod,
        step=60,
        totalSteps=200,
        lastCheckpointStep=50,
        lastCheckpointPath="s3://results/low/checkpoints/step-50",
    )
    wait_until(
        lambda: job_status(cluster, ns, "low").get("lastCheckpoint", {}).get("step") == 50,
        timeout=30,
        what="the low job's checkpoint in its status",
    )
    submit(cluster, queued_job("high", ns, "team", resources={"priorityClassName": f"{ns}-high"}))
    status = wait_until(
        lambda: (
            (s := job_status(cluster, ns, "low")).get("phase") == "Queued"
            and condition(s, "Admitted").get("reason") == "Preempted"
            and s
        ),
        timeout=60,
        what="the low job to be preempted",
    )
    assert "resumes from checkpoint step 50" in condition(status, "Admitted")["message"]
    assert status["attempts"] == 1 and not condition(status, "Failed"), "not a failure"
    assert any(e["reason"] == "Preempted" for e in events(cluster, ns, "low"))
    wait_phase(cluster, ns, "high", "Running", timeout=90)
    wait_until(
        lambda: worker_pods(cluster, ns, "low") == [],
        timeout=30,
        what="the preempted gang to be gone (its GPUs given to the high job)",
    )
    (high_pod,) = worker_pods(cluster, ns, "high")
    finish_pod(cluster, ns, high_pod["metadata"]["name"], 0)
    wait_phase(cluster, ns, "high", "Succeeded", timeout=60)
    # Re-admitted: the same attempt comes back and resumes from the checkpoint.
    status = wait_phase(cluster, ns, "low", "Running", timeout=90)
    assert status["attempts"] == 1
    assert status["lastCheckpoint"]["step"] == 50
    (again,) = worker_pods(cluster, ns, "low")
    assert again["metadata"]["uid"] != pod["metadata"]["uid"]
    env = {e["name"]: e.get("value") for e in again["spec"]["containers"][0]["env"]}
    assert env.get("KUBETUNE_ATTEMPT") == "1"


def test_a_cohort_lends_idle_quota_and_reclaims_it(
    cluster: Cluster, operator: Operators, ns: str, kueue: KueueEnv
) -> None:
    cohort = f"{ns}-org"
    kueue.apply(
        quota_manifests(ns, cluster_queue=f"{ns}-a", local_queue="team-a", gpus=8, cohort=cohort)
    )
    kueue.apply(
        quota_manifests(
            ns,
            cluster_queue=f"{ns}-b",
            local_queue="team-b",
            gpus=8,
            cohort=cohort,
            preemption={"reclaimWithinCohort": "Any"},
        )
    )
    # team-a runs two 8-GPU jobs on an 8-GPU quota: the second borrows team-b's idle quota.
    for name in ("a1", "a2"):
        submit(cluster, queued_job(name, ns, "team-a"))
        wait_phase(cluster, ns, name, "Running", timeout=90)
    # team-b wants its quota back: Kueue evicts the borrower, which waits again.
    submit(cluster, queued_job("b1", ns, "team-b"))
    wait_phase(cluster, ns, "b1", "Running", timeout=90)
    preempted = wait_until(
        lambda: [
            n
            for n in ("a1", "a2")
            if condition(job_status(cluster, ns, n), "Admitted").get("reason") == "Preempted"
        ],
        timeout=60,
        what="one team-a job to give the borrowed quota back",
    )
    (back,) = preempted
    wait_until(
        lambda: worker_pods(cluster, ns, back) == [],
        timeout=30,
        what="the borrower's gang to be gone",
    )
    assert job_status(cluster, ns, back)["phase"] == "Queued"
    # team-b is done: the quota is idle again and team-a borrows it once more.
    (b_pod,) = worker_pods(cluster, ns, "b1")
    finish_pod(cluster, ns, b_pod["metadata"]["name"], 0)
    wait_phase(cluster, ns, back, "Running", timeout=90)
