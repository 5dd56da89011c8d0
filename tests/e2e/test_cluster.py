"""Proof that the local control plane behaves like a real cluster: real scheduler with extended
GPU resources, RBAC, PodSecurity admission, ServiceAccount tokens, garbage collection,
Deployment/Job controllers, and KWOK-driven pod and node lifecycles."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
import yaml

from kubetune.devcluster import simulate
from kubetune.devcluster.manifests import EXIT_CODE_ANNOTATION, EXIT_DELAY_ANNOTATION
from kubetune.devcluster.testing import Cluster, Kubectl, wait_until

pytestmark = pytest.mark.e2e

PAUSE_IMAGE = "kubetune.invalid/fake-container:0"  # never pulled: KWOK fakes the containers

RESTRICTED_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def pod_manifest(
    name: str,
    *,
    gpus: int = 0,
    annotations: dict[str, str] | None = None,
    node_selector: dict[str, str] | None = None,
    security_context: dict[str, Any] | None = None,
    restart_policy: str = "Never",
) -> str:
    container: dict[str, Any] = {"name": "main", "image": PAUSE_IMAGE}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    if security_context is not None:
        container["securityContext"] = security_context
    spec: dict[str, Any] = {"containers": [container], "restartPolicy": restart_policy}
    if node_selector:
        spec["nodeSelector"] = node_selector
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": spec,
    }
    return yaml.safe_dump(doc)


def get_json(kubectl: Kubectl, *args: str, namespace: str | None = None) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json", namespace=namespace).stdout)


def pod_phase(kubectl: Kubectl, name: str, namespace: str) -> str:
    return str(get_json(kubectl, "pod", name, namespace=namespace).get("status", {}).get("phase"))


def wait_phase(
    kubectl: Kubectl, name: str, namespace: str, phase: str, timeout: float = 60
) -> None:
    kubectl(
        "wait",
        f"--for=jsonpath={{.status.phase}}={phase}",
        f"--timeout={int(timeout)}s",
        f"pod/{name}",
        namespace=namespace,
        timeout=timeout + 15,
    )


# -- the cluster itself ---------------------------------------------------------------------------


def test_versions_and_fake_nodes(cluster: Cluster, kubectl: Kubectl) -> None:
    version = json.loads(kubectl("version", "-o", "json").stdout)
    expected = cluster.binaries.versions.kubernetes
    assert version["serverVersion"]["gitVersion"] == expected
    assert version["clientVersion"]["gitVersion"] == expected

    nodes = get_json(kubectl, "nodes")["items"]
    gpu = [n for n in nodes if n["metadata"]["labels"].get("kubetune.io/node-pool") == "gpu"]
    cpu = [n for n in nodes if n["metadata"]["labels"].get("kubetune.io/node-pool") == "cpu"]
    assert len(gpu) >= 4 and len(cpu) >= 2
    for node in gpu:
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    for node in cpu:
        assert "nvidia.com/gpu" not in node["status"]["allocatable"]
    for node in gpu + cpu:
        assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", node["metadata"]["name"]
        # no taint: pods need no KWOK toleration
        assert not node.get("spec", {}).get("taints"), node["spec"]


def test_helm_binary_is_built(cluster: Cluster) -> None:
    out = cluster.helm("version", "--short").stdout
    assert cluster.binaries.versions.helm in out


# -- scheduling with extended resources ---------------------------------------------------------


def test_pod_asking_more_gpus_than_any_node_has_stays_pending(
    kubectl: Kubectl, namespace: str
) -> None:
    kubectl("apply", "-f", "-", input=pod_manifest("greedy", gpus=9), namespace=namespace)

    def unschedulable() -> str | None:
        pod = get_json(kubectl, "pod", "greedy", namespace=namespace)
        for cond in pod.get("status", {}).get("conditions", []):
            if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable":
                return str(cond.get("message", ""))
        return None

    message = wait_until(unschedulable, timeout=30, what="PodScheduled=False/Unschedulable")
    assert "Insufficient nvidia.com/gpu" in message
    assert pod_phase(kubectl, "greedy", namespace) == "Pending"


def test_gpu_pod_pending_until_gpus_are_freed(
    cluster: Cluster, kubectl: Kubectl, namespace: str
) -> None:
    # A dedicated fake GPU node keeps this test independent of what else runs on the cluster.
    node = f"kwok-gpu-test-{uuid.uuid4().hex[:6]}"
    sel = {"kubetune.io/e2e-node": node}
    simulate.create_node(
        node, gpus=8, labels=sel, kubeconfig=cluster.kubeconfig, kubectl=cluster.kubectl_path
    )
    try:
        kubectl(
            "apply",
            "-f",
            "-",
            input=pod_manifest("first", gpus=6, node_selector=sel),
            namespace=namespace,
        )
        wait_phase(kubectl, "first", namespace, "Running")
        assert get_json(kubectl, "pod", "first", namespace=namespace)["spec"]["nodeName"] == node

        # 6 of 8 GPUs are taken: a pod asking for 4 cannot be placed.
        kubectl(
            "apply",
            "-f",
            "-",
            input=pod_manifest("second", gpus=4, node_selector=sel),
            namespace=namespace,
        )

        def scheduled_condition() -> dict[str, Any] | None:
            pod = get_json(kubectl, "pod", "second", namespace=namespace)
            for cond in pod.get("status", {}).get("conditions", []):
                if cond["type"] == "PodScheduled":
                    return dict(cond)
            return None

        cond = wait_until(scheduled_condition, timeout=30, what="a PodScheduled condition")
        assert cond["status"] == "False" and cond["reason"] == "Unschedulable"
        assert "Insufficient nvidia.com/gpu" in cond["message"]
        assert pod_phase(kubectl, "second", namespace) == "Pending"

        # The first pod completes: its GPUs are free again and the scheduler places the second.
        simulate.finish_pod(
            "first",
            namespace,
            exit_code=0,
            kubeconfig=cluster.kubeconfig,
            kubectl=cluster.kubectl_path,
        )
        wait_phase(kubectl, "second", namespace, "Running", timeout=60)
        assert get_json(kubectl, "pod", "second", namespace=namespace)["spec"]["nodeName"] == node
    finally:
        kubectl("delete", "pod", "--all", "--wait=false", namespace=namespace, check=False)
        simulate.delete_node(node, kubeconfig=cluster.kubeconfig, kubectl=cluster.kubectl_path)


# -- admission and auth ---------------------------------------------------------------------------


def test_pod_security_restricted_is_enforced(kubectl: Kubectl, namespace: str) -> None:
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")

    refused = kubectl(
        "apply", "-f", "-", input=pod_manifest("loose"), namespace=namespace, check=False
    )
    assert refused.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in refused.stderr
    assert "allowPrivilegeEscalation" in refused.stderr

    kubectl(
        "apply",
        "-f",
        "-",
        input=pod_manifest("tight", security_context=RESTRICTED_SECURITY_CONTEXT),
        namespace=namespace,
    )
    wait_phase(kubectl, "tight", namespace, "Running")


def _api_request(
    cluster: Cluster, path: str, token: str, method: str = "GET", body: Any = None
) -> tuple[int, Any]:
    ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        cluster.server + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"{}")


def test_service_account_token_authenticates_and_rbac_authorizes(
    cluster: Cluster, kubectl: Kubectl, namespace: str
) -> None:
    kubectl("create", "serviceaccount", "robot", namespace=namespace)
    token = kubectl(
        "create", "token", "robot", "--duration=10m", namespace=namespace
    ).stdout.strip()

    code, review = _api_request(
        cluster,
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        token,
        method="POST",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    assert code == 201, review
    assert review["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:robot"

    # RBAC: no permission yet, then a RoleBinding to the built-in "view" ClusterRole.
    pods_path = f"/api/v1/namespaces/{namespace}/pods"
    code, _ = _api_request(cluster, pods_path, token)
    assert code == 403
    sa = f"--serviceaccount={namespace}:robot"
    kubectl("create", "rolebinding", "robot-view", "--clusterrole=view", sa, namespace=namespace)
    wait_until(
        lambda: _api_request(cluster, pods_path, token)[0] == 200, timeout=15, what="RBAC to allow"
    )
    code, _ = _api_request(cluster, f"/api/v1/namespaces/{namespace}/secrets", token)
    assert code == 403

    # A forged token is refused.
    code, _ = _api_request(cluster, pods_path, token[:-4] + "AAAA")
    assert code == 401

    # Pods get a projected ServiceAccount token volume from the ServiceAccount admission plugin.
    kubectl("apply", "-f", "-", input=pod_manifest("with-token"), namespace=namespace)
    pod = get_json(kubectl, "pod", "with-token", namespace=namespace)
    projected = [v for v in pod["spec"]["volumes"] if v["name"].startswith("kube-api-access-")]
    assert projected and "serviceAccountToken" in json.dumps(projected)


# -- controllers ----------------------------------------------------------------------------------


def test_garbage_collector_deletes_dependents(kubectl: Kubectl, namespace: str) -> None:
    kubectl("create", "configmap", "owner", "--from-literal=a=b", namespace=namespace)
    uid = get_json(kubectl, "configmap", "owner", namespace=namespace)["metadata"]["uid"]
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
            ],
        },
        "data": {"key": "value"},
    }
    kubectl("apply", "-f", "-", input=yaml.safe_dump(child), namespace=namespace)
    kubectl("delete", "configmap", "owner", namespace=namespace)
    wait_until(
        lambda: (
            kubectl("get", "configmap", "child", namespace=namespace, check=False).returncode != 0
        ),
        timeout=60,
        what="the garbage collector to delete the dependent ConfigMap",
    )


def test_deployment_pods_run_on_kwok_nodes(kubectl: Kubectl, namespace: str) -> None:
    kubectl(
        "create", "deployment", "web", f"--image={PAUSE_IMAGE}", "--replicas=3", namespace=namespace
    )
    kubectl("rollout", "status", "deployment/web", "--timeout=60s", namespace=namespace, timeout=75)
    pods = get_json(kubectl, "pods", "-l", "app=web", namespace=namespace)["items"]
    assert len(pods) == 3
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert pod["spec"]["nodeName"].startswith("kwok-")
        assert pod["status"].get("podIP")
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    # scaling down removes pods (graceful deletion handled by KWOK)
    kubectl("scale", "deployment/web", "--replicas=1", namespace=namespace)
    wait_until(
        lambda: len(get_json(kubectl, "pods", "-l", "app=web", namespace=namespace)["items"]) == 1,
        timeout=60,
        what="scale down to 1 pod",
    )


# -- KWOK-driven pod lifecycle ------------------------------------------------------------------


def test_pod_can_be_made_failed_with_exit_code_and_reason(
    cluster: Cluster, kubectl: Kubectl, namespace: str
) -> None:
    kubectl("apply", "-f", "-", input=pod_manifest("trainer", gpus=1), namespace=namespace)
    wait_phase(kubectl, "trainer", namespace, "Running")

    phase = simulate.finish_pod(
        "trainer", namespace, exit_code=137, reason="OOMKilled", message="killed by the OOM killer",
        kubeconfig=cluster.kubeconfig, kubectl=cluster.kubectl_path,
    )  # fmt: skip
    assert phase == "Failed"
    status = simulate.pod_status(
        "trainer", namespace, kubeconfig=cluster.kubeconfig, kubectl=cluster.kubectl_path
    )
    assert status["phase"] == "Failed"
    terminated = status["containerStatuses"][0]["state"]["terminated"]  # type: ignore[index]
    assert terminated["exitCode"] == 137
    assert terminated["reason"] == "OOMKilled"
    assert terminated["message"] == "killed by the OOM killer"


def test_pod_can_be_made_succeeded(cluster: Cluster, kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-f", "-", input=pod_manifest("done"), namespace=namespace)
    wait_phase(kubectl, "done", namespace, "Running")
    simulate.finish_pod(
        "done", namespace, kubeconfig=cluster.kubeconfig, kubectl=cluster.kubectl_path
    )
    status = simulate.pod_status(
        "done", namespace, kubeconfig=cluster.kubeconfig, kubectl=cluster.kubectl_path
    )
    assert status["phase"] == "Succeeded"
    terminated = status["containerStatuses"][0]["state"]["terminated"]  # type: ignore[index]
    assert terminated["exitCode"] == 0 and terminated["reason"] == "Completed"


def test_pod_annotated_at_creation_exits_after_delay(kubectl: Kubectl, namespace: str) -> None:
    ann = {EXIT_CODE_ANNOTATION: "0", EXIT_DELAY_ANNOTATION: "2s"}
    kubectl("apply", "-f", "-", input=pod_manifest("short", annotations=ann), namespace=namespace)
    wait_phase(kubectl, "short", namespace, "Running")
    wait_phase(kubectl, "short", namespace, "Succeeded", timeout=30)


def _job(name: str, exit_code: int) -> str:
    doc = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {
                    "annotations": {
                        EXIT_CODE_ANNOTATION: str(exit_code),
                        EXIT_DELAY_ANNOTATION: "1s",
                    }
                },
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": PAUSE_IMAGE}],
                },
            },
        },
    }
    return yaml.safe_dump(doc)


def test_job_controller_sees_pod_success_and_failure(kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-f", "-", input=_job("ok", 0) + "---\n" + _job("bad", 3), namespace=namespace)
    kubectl(
        "wait",
        "--for=condition=Complete",
        "--timeout=60s",
        "job/ok",
        namespace=namespace,
        timeout=75,
    )
    kubectl(
        "wait",
        "--for=condition=Failed",
        "--timeout=60s",
        "job/bad",
        namespace=namespace,
        timeout=75,
    )
    bad = get_json(kubectl, "job", "bad", namespace=namespace)
    reasons = {c["type"]: c.get("reason") for c in bad["status"]["conditions"]}
    assert reasons["Failed"] == "BackoffLimitExceeded"


# -- KWOK-driven node lifecycle -----------------------------------------------------------------


def test_node_not_ready_and_deleted(cluster: Cluster, kubectl: Kubectl) -> None:
    node = f"kwok-gpu-test-{uuid.uuid4().hex[:6]}"
    kw: dict[str, Any] = {"kubeconfig": cluster.kubeconfig, "kubectl": cluster.kubectl_path}
    simulate.create_node(node, gpus=8, **kw)
    try:
        simulate.set_node_ready(node, False, reason="GPUFellOffTheBus", **kw)
        n = get_json(kubectl, "node", node)
        ready = next(c for c in n["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "False" and ready["reason"] == "GPUFellOffTheBus"

        # the node lifecycle controller reacts like for a real node
        def not_ready_taint() -> bool:
            taints = get_json(kubectl, "node", node).get("spec", {}).get("taints") or []
            return any(t["key"] == "node.kubernetes.io/not-ready" for t in taints)

        wait_until(not_ready_taint, timeout=60, what="the node.kubernetes.io/not-ready taint")

        simulate.set_node_ready(node, True, **kw)
        wait_until(lambda: not not_ready_taint(), timeout=60, what="the not-ready taint to go")
    finally:
        simulate.delete_node(node, **kw)
    assert kubectl("get", "node", node, check=False).returncode != 0
