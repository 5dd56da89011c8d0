"""Drive fake pods and nodes of the dev cluster (KWOK Stages, see ``manifests``).

Every function talks to the API server through kubectl: the ``kubeconfig`` argument, else
``$KUBECONFIG``; the kubectl binary is ``kubectl`` argument, ``$KUBETUNE_KUBECTL``, the cached
build, or ``kubectl`` on PATH.

Example::

    finish_pod("trainer-0", "team-a", exit_code=137, reason="OOMKilled")
    set_node_ready("kwok-gpu-1", False)
    delete_node("kwok-gpu-2")
"""

from __future__ import annotations

import json
from pathlib import Path

from kubetune.devcluster import manifests
from kubetune.devcluster.cluster import run_kubectl
from kubetune.devcluster.versions import DevClusterError

PathLike = Path | str | None


def _wait(
    target: str,
    condition: str,
    *,
    namespace: str | None,
    timeout: float,
    kubeconfig: PathLike,
    kubectl: PathLike,
) -> None:
    args = ["wait", f"--for={condition}", f"--timeout={int(timeout)}s", target]
    if namespace:
        args += ["-n", namespace]
    run_kubectl(args, kubeconfig=kubeconfig, kubectl=kubectl, timeout=timeout + 15)


def finish_pod(
    name: str,
    namespace: str = "default",
    exit_code: int = 0,
    reason: str | None = None,
    message: str | None = None,
    *,
    container: str | None = None,
    delay: str | None = None,
    wait: bool = True,
    timeout: float = 60.0,
    kubeconfig: PathLike = None,
    kubectl: PathLike = None,
) -> str:
    """Make a pod on a fake node terminate: ``Succeeded`` for ``exit_code`` 0, else ``Failed``.

    ``reason`` (e.g. ``"OOMKilled"``) and ``message`` become the containers' terminated reason and
    message; ``container`` limits the non-zero exit code to one container; ``delay`` (a Go
    duration such as ``"10s"``) postpones the exit. With ``wait`` it blocks until the pod reached
    its final phase and returns that phase.
    """
    if exit_code < 0 or exit_code > 255:
        raise ValueError("exit_code must be within 0..255")
    ann = {manifests.EXIT_CODE_ANNOTATION: str(exit_code)}
    if reason is not None:
        ann[manifests.EXIT_REASON_ANNOTATION] = reason
    if message is not None:
        ann[manifests.EXIT_MESSAGE_ANNOTATION] = message
    if container is not None:
        ann[manifests.EXIT_CONTAINER_ANNOTATION] = container
    if delay is not None:
        ann[manifests.EXIT_DELAY_ANNOTATION] = delay
    run_kubectl(
        ["annotate", "--overwrite", "-n", namespace, f"pod/{name}"]
        + [f"{k}={v}" for k, v in ann.items()],
        kubeconfig=kubeconfig,
        kubectl=kubectl,
    )
    phase = "Succeeded" if exit_code == 0 else "Failed"
    if wait:
        _wait(
            f"pod/{name}",
            f"jsonpath={{.status.phase}}={phase}",
            namespace=namespace,
            timeout=timeout,
            kubeconfig=kubeconfig,
            kubectl=kubectl,
        )
    return phase


def set_node_ready(
    name: str,
    ready: bool,
    *,
    reason: str | None = None,
    wait: bool = True,
    timeout: float = 60.0,
    kubeconfig: PathLike = None,
    kubectl: PathLike = None,
) -> None:
    """Make a fake node report Ready=False (``ready=False``) or become Ready again."""
    if ready:
        args = [
            f"{manifests.NODE_READY_ANNOTATION}-",
            f"{manifests.NODE_NOT_READY_REASON_ANNOTATION}-",
        ]
    else:
        args = [f"{manifests.NODE_READY_ANNOTATION}=false"]
        if reason:
            args.append(f"{manifests.NODE_NOT_READY_REASON_ANNOTATION}={reason}")
    run_kubectl(
        ["annotate", "--overwrite", f"node/{name}", *args],
        kubeconfig=kubeconfig,
        kubectl=kubectl,
    )
    if wait:
        _wait(
            f"node/{name}",
            f"condition=Ready={'true' if ready else 'false'}",
            namespace=None,
            timeout=timeout,
            kubeconfig=kubeconfig,
            kubectl=kubectl,
        )


def delete_node(
    name: str,
    *,
    wait: bool = True,
    timeout: float = 60.0,
    kubeconfig: PathLike = None,
    kubectl: PathLike = None,
) -> None:
    """Delete a Node object, as when a machine is lost; its pods are garbage-collected later by
    the pod GC controller (orphaned pods) or can be deleted by the test."""
    run_kubectl(
        [
            "delete",
            "node",
            name,
            f"--wait={'true' if wait else 'false'}",
            f"--timeout={int(timeout)}s",
        ],
        kubeconfig=kubeconfig,
        kubectl=kubectl,
        timeout=timeout + 15,
    )


def create_node(
    name: str,
    *,
    gpus: int = 8,
    pool: str | None = None,
    cpu: str = "96",
    memory: str = "1024Gi",
    labels: dict[str, str] | None = None,
    wait: bool = True,
    timeout: float = 60.0,
    kubeconfig: PathLike = None,
    kubectl: PathLike = None,
) -> None:
    """Add a fake node (GPU node by default) managed by KWOK, e.g. to replace a deleted one."""
    spec = manifests.NodeSpec(
        name,
        pool or ("gpu" if gpus else "cpu"),
        cpu=cpu,
        memory=memory,
        gpus=gpus,
        extra_labels=dict(labels or {}),
    )
    run_kubectl(
        ["apply", "-f", "-"],
        input=manifests.nodes_yaml([spec]),
        kubeconfig=kubeconfig,
        kubectl=kubectl,
    )
    if wait:
        _wait(
            f"node/{name}",
            "condition=Ready",
            namespace=None,
            timeout=timeout,
            kubeconfig=kubeconfig,
            kubectl=kubectl,
        )


def pod_status(
    name: str,
    namespace: str = "default",
    *,
    kubeconfig: PathLike = None,
    kubectl: PathLike = None,
) -> dict[str, object]:
    """The ``status`` of a pod as a dict."""
    proc = run_kubectl(
        ["get", "pod", name, "-n", namespace, "-o", "json"],
        kubeconfig=kubeconfig,
        kubectl=kubectl,
    )
    try:
        status = json.loads(proc.stdout).get("status", {})
    except ValueError as exc:
        raise DevClusterError(f"bad kubectl output: {proc.stdout[:200]}") from exc
    return dict(status)
