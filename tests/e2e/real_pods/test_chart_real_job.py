"""The Helm chart's operator Deployment runs as real pods and runs a real job.

The third set-up path (charts/kubetune/DEVCLUSTER.md), as a user runs it: ``helm install``
the chart with ``charts/kubetune/examples/devcluster-values.yaml`` (operator replicas on
the tainted real-pod nodes, in-cluster API access through the node agent: the projected
ServiceAccount token, ``kubernetes.default.svc``);
``kubetune dev seed -f charts/kubetune/examples/devcluster-job.yaml |
kubectl apply -f -``; the example job applied. The installed operator elects a leader,
validates the job on a real node, runs the 2-pod gang, reads rank 0's real ``/progress``
from its own pod, and the job Succeeds with its adapter on the output volume. ``helm
uninstall`` leaves no object of the release, and the agent nothing of its pods.

Prints ``helm install -> operator ready`` and the job's wall time (BENCHMARKS.md).
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.devcluster.testing import wait_until
from tests.e2e import operator_helpers as helpers
from tests.e2e.real_pods.conftest import RealCluster
from tests.e2e.real_pods.jobs import check_lora_outputs, print_pod_logs, shared_operator_paused

pytest.importorskip("torch")

CHART = helpers.REPO / "charts" / "kubetune"
VALUES = CHART / "examples" / "devcluster-values.yaml"
JOB_FILE = CHART / "examples" / "devcluster-job.yaml"
RELEASE = "kt-real"
OPERATOR = f"{RELEASE}-kubetune-operator"  # Deployment, Lease, ServiceAccount
SELECTOR = f"app.kubernetes.io/instance={RELEASE}"
KUBETUNE = Path(sys.executable).parent / "kubetune"
#: what `helm uninstall` must remove (every kind the chart renders with the defaults)
RELEASE_KINDS = (
    "deployments.apps",
    "replicasets.apps",
    "pods",
    "serviceaccounts",
    "services",
    "roles.rbac.authorization.k8s.io",
    "rolebindings.rbac.authorization.k8s.io",
    "networkpolicies.networking.k8s.io",
    "poddisruptionbudgets.policy",
    "clusterroles.rbac.authorization.k8s.io",
    "clusterrolebindings.rbac.authorization.k8s.io",
)


def release_objects(cluster: Any) -> list[str]:
    found = []
    for kind in RELEASE_KINDS:
        items = helpers.kget(cluster, kind, "-A", "-l", SELECTOR)["items"]
        found += [
            f"{kind}/{i['metadata'].get('namespace', '')}/{i['metadata']['name']}" for i in items
        ]
    return found


def operator_ready(cluster: Any, ns: str) -> dict[str, Any] | None:
    """Deployment fully available and its Lease held by one of the release's running pods."""
    deploy = helpers.kget(cluster, "deployment", OPERATOR, namespace=ns)
    status = deploy.get("status") or {}
    if status.get("availableReplicas") != deploy["spec"]["replicas"]:
        return None
    proc = cluster.kubectl(
        "get", "lease", OPERATOR, "-o", "jsonpath={.spec.holderIdentity}", namespace=ns, check=False
    )
    holder = proc.stdout.strip()
    pods = helpers.kget(cluster, "pods", "-l", SELECTOR, namespace=ns)["items"]
    running = {p["metadata"]["name"]: p for p in pods if p["status"].get("phase") == "Running"}
    return running.get(holder)


def wait_done(cluster: Any, ns: str, name: str, timeout: float) -> dict[str, Any]:
    status: dict[str, Any] = wait_until(
        lambda: (
            (s := helpers.job_status(cluster, ns, name)).get("phase") in ("Succeeded", "Failed")
            and s
        ),
        timeout=timeout,
        interval=1,
        what=f"{ns}/{name} finished",
    )
    return status


def test_chart_operator_on_real_pods_runs_a_real_job(
    real_cluster: RealCluster, namespace: str
) -> None:
    cluster = real_cluster.cluster
    release_ns = f"kt-real-{uuid.uuid4().hex[:6]}"
    job = yaml.safe_load(JOB_FILE.read_text())
    name = job["metadata"]["name"]
    job["metadata"]["namespace"] = namespace
    max_steps = job["spec"]["hyperparameters"]["maxSteps"]
    operator_pods: list[dict[str, Any]] = []
    with shared_operator_paused():
        try:
            t0 = time.monotonic()
            cluster.helm(
                "install",
                RELEASE,
                str(CHART),
                "--namespace",
                release_ns,
                "--create-namespace",
                "-f",
                str(VALUES),
            )
            leader = wait_until(
                lambda: operator_ready(cluster, release_ns),
                timeout=180,
                interval=0.5,
                what="the chart's operator ready and leading",
            )
            ready_s = time.monotonic() - t0
            operator_pods = helpers.kget(cluster, "pods", "-l", SELECTOR, namespace=release_ns)[
                "items"
            ]
            assert len(operator_pods) == 2
            assert {p["spec"]["nodeName"] for p in operator_pods} <= set(real_cluster.nodes)
            # in-cluster config from the projected token volume the API server added
            assert any(v["name"].startswith("kube-api-access-") for v in leader["spec"]["volumes"])

            # the documented data path: seed the example's inputs, apply its claims
            seeded = subprocess.run(
                [
                    str(KUBETUNE),
                    "dev",
                    "seed",
                    "-f",
                    str(JOB_FILE),
                    "--namespace",
                    namespace,
                    "--state-dir",
                    str(cluster.dev.state_dir),
                ],
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
            )
            cluster.kubectl("apply", "-f", "-", input=seeded.stdout)
            output = real_cluster.agent_dir / "pvc" / "checkpoints" / name

            t1 = time.monotonic()
            helpers.apply(cluster, job)
            final = wait_done(cluster, namespace, name, timeout=900)
            job_s = time.monotonic() - t1
            assert final["phase"] == "Succeeded", final
        except BaseException:
            print_pod_logs(real_cluster, release_ns, namespace, lines=60)
            raise
        finally:
            cluster.helm("uninstall", RELEASE, "--namespace", release_ns, "--wait", check=False)
    print(f"\nhelm install -> operator ready (2 replicas available, lease held): {ready_s:.1f}s")
    print(f"real-pod LoRA job through the chart's operator: {job_s:.1f}s apply -> Succeeded")

    # validated on a real node; real progress read by the operator pod from rank 0's pod IP
    assert helpers.condition(final, "Validated").get("status") == "True"
    # totalSteps comes only from a progress document the operator pod fetched from rank 0
    # (the example trains 80 steps, a few seconds, and the values poll every second: 20
    # steps trained in a second once finished between two polls of a 2 s interval)
    assert final["progress"]["totalSteps"] == max_steps, final["progress"]
    assert final["progress"]["step"] == max_steps
    workers = helpers.worker_pods(cluster, namespace, name)
    assert workers and {p["spec"]["nodeName"] for p in workers} <= set(real_cluster.nodes)
    check_lora_outputs(output, max_steps)

    # uninstall: no object of the release, no process/netns/sandbox of its pods on the agent
    wait_until(lambda: not release_objects(cluster), timeout=120, what="release objects gone")
    index = real_cluster.bridge_index
    uids = [p["metadata"]["uid"].replace("-", "")[:8] for p in operator_pods]

    def agent_leftovers() -> list[str]:
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        left = [n for n in netns.split() if any(n == f"kt{index}-{u}" for u in uids)]
        left += [p.name for p in (real_cluster.agent_dir / "pods").glob(f"{release_ns}_*")]
        return left

    left: list[str] = []

    def nothing_left() -> bool:
        left[:] = agent_leftovers()
        return not left

    try:
        wait_until(nothing_left, timeout=60, what="agent leftovers of the operator")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: still on the agent: {left}") from None
    cluster.kubectl("delete", "namespace", release_ns, "--wait=false", check=False)
