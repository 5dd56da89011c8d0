"""Kueue, built from source and started by the dev tooling, admits Workloads within quota and
holds back the one that does not fit; its webhooks (admission and conversion) answer the API
server, and guard Kueue objects and nothing else."""

from __future__ import annotations

import json
import time
from typing import Any

from kubetune.devcluster.kueue import API_VERSION
from kubetune.devcluster.testing import Cluster, wait_until
from tests.e2e.kueue.helpers import KueueEnv, condition, is_admitted, quota_manifests

GPU = "nvidia.com/gpu"


def _workload(name: str, queue: str, gpus: int) -> dict[str, Any]:
    """A plain Workload: one pod set of one pod asking for ``gpus`` GPUs."""
    return {
        "apiVersion": API_VERSION,
        "kind": "Workload",
        "metadata": {"name": name},
        "spec": {
            "queueName": queue,
            "podSets": [
                {
                    "name": "main",
                    "count": 1,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [
                                {
                                    "name": "trainer",
                                    "image": "registry.invalid/trainer:1",
                                    "resources": {
                                        "requests": {GPU: str(gpus), "cpu": "8", "memory": "64Gi"},
                                        "limits": {GPU: str(gpus)},
                                    },
                                }
                            ],
                        }
                    },
                }
            ],
        },
    }


def pod_template() -> dict[str, Any]:
    return {
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "registry.invalid/plain:1"}],
            "tolerations": [{"operator": "Exists"}],
        }
    }


def _pending_for_quota(wl: dict[str, Any]) -> bool:
    cond = condition(wl, "QuotaReserved")
    return bool(cond and cond["status"] == "False" and "insufficient" in cond["message"].lower())


def test_kueue_admits_within_quota_and_holds_back_the_rest(
    kueue: KueueEnv, namespace: str, cluster: Cluster
) -> None:
    assert kueue.state.version == "v0.19.2"
    kueue.apply(quota_manifests(namespace, cluster_queue=f"cq-{namespace}", gpus=16))

    started = time.monotonic()
    for name in ("first", "second"):
        kueue.apply(_workload(name, "default", 8), namespace=namespace)
    admitted = [
        kueue.wait_workload(n, namespace, is_admitted, timeout=30, what=f"{n} admitted")
        for n in ("first", "second")
    ]
    admission_seconds = time.monotonic() - started
    for wl in admitted:
        admission = wl["status"]["admission"]
        assert admission["clusterQueue"] == f"cq-{namespace}"
        (assignment,) = admission["podSetAssignments"]
        assert assignment["flavors"][GPU] == "default-flavor"
        assert assignment["resourceUsage"][GPU] == "8"
        assert condition(wl, "QuotaReserved")["status"] == "True"  # type: ignore[index]

    # the conversion webhook answers: the stored v1beta2 object read as v1beta1
    old = json.loads(
        cluster.kubectl(
            "get", "workloads.v1beta1.kueue.x-k8s.io", "first", "-o", "json", namespace=namespace
        ).stdout
    )
    assert old["apiVersion"] == "kueue.x-k8s.io/v1beta1"
    assert old["status"]["admission"]["clusterQueue"] == f"cq-{namespace}"

    kueue.apply(_workload("third", "default", 8), namespace=namespace)
    third = kueue.wait_workload(
        "third", namespace, _pending_for_quota, timeout=30, what="third pending for quota"
    )
    assert not third["status"].get("admission")
    assert not is_admitted(third)
    # it stays pending: quota is held by the two admitted ones
    time.sleep(2)
    assert not is_admitted(kueue.workload("third", namespace))

    # freeing quota admits it (Kueue reacts to the finished/deleted Workload)
    kueue.delete("workloads.kueue.x-k8s.io", "first", namespace)
    kueue.wait_workload("third", namespace, is_admitted, timeout=30, what="third admitted")

    cq = kueue.get("clusterqueues.kueue.x-k8s.io", f"cq-{namespace}")
    print(
        f"kueue up in {kueue.state.up_seconds:.1f}s; "
        f"admission of 2 workloads took {admission_seconds:.2f}s; "
        f"admitted status: {json.dumps(admitted[0]['status'])}; "
        f"pending status: {json.dumps(third['status'])}; "
        f"clusterqueue status: {json.dumps(cq.get('status'))}"
    )


def test_ordinary_pods_are_not_intercepted(
    kueue: KueueEnv, namespace: str, cluster: Cluster
) -> None:
    """With Kueue running, pods and batch Jobs are created as before: none of Kueue's job
    integration webhooks is installed and nothing gates them."""
    hooks = json.loads(
        cluster.kubectl(
            "get", "mutatingwebhookconfigurations,validatingwebhookconfigurations", "-o", "json"
        ).stdout
    )["items"]
    kueue_hooks = [c for c in hooks if c["metadata"]["name"].startswith("kueue-")]
    assert len(kueue_hooks) == 2
    groups = {
        g for c in kueue_hooks for w in c["webhooks"] for r in w["rules"] for g in r["apiGroups"]
    }
    assert groups == {"kueue.x-k8s.io"}, groups
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"}, **pod_template()}
    kueue.apply(pod, namespace=namespace)
    created = json.loads(
        cluster.kubectl("get", "pod", "plain", "-o", "json", namespace=namespace).stdout
    )
    assert not created["spec"].get("schedulingGates")
    assert "kueue.x-k8s.io/queue-name" not in created["metadata"].get("labels", {})
    wait_until(
        lambda: (
            cluster.kubectl(
                "get", "pod", "plain", "-o", "jsonpath={.spec.nodeName}", namespace=namespace
            ).stdout
        ),
        timeout=30,
        what="the plain pod scheduled",
    )
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "plain-job"},
        "spec": {"template": pod_template(), "backoffLimit": 0},
    }
    kueue.apply(job, namespace=namespace)
    # the job controller creates its pod: Kueue neither suspends nor gates it
    wait_until(
        lambda: cluster.kubectl(
            "get", "pods", "-l", "job-name=plain-job", "-o", "name", namespace=namespace
        ).stdout.strip(),
        timeout=30,
        what="the plain Job's pod",
    )
    created_job = kueue.get("job", "plain-job", namespace)
    assert not created_job["spec"].get("suspend")
