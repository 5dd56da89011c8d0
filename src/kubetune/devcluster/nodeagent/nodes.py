"""The agent's Node objects: registration, status heartbeats and Leases."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from kubetune.devcluster.nodeagent.config import GPU_RESOURCE, NODE_POOL, TAINT, AgentConfig
from kubetune.devcluster.nodeagent.kubeapi import ApiError, KubeApi

JSON = dict[str, Any]
log = logging.getLogger(__name__)
POOL_LABEL = "kubetune.io/node-pool"
LEASE_NAMESPACE = "kube-node-lease"
AGENT_ANNOTATION = "kubetune.io/node-agent"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def resources(cfg: AgentConfig) -> dict[str, str]:
    out = {
        "cpu": cfg.cpu,
        "memory": cfg.memory,
        "ephemeral-storage": cfg.ephemeral_storage,
        "pods": cfg.pods,
    }
    if cfg.gpus:
        out[GPU_RESOURCE] = str(cfg.gpus)
    return out


def conditions() -> list[JSON]:
    now = _now()

    def cond(kind: str, ok: bool, reason: str, message: str) -> JSON:
        return {
            "type": kind,
            "status": "True" if ok else "False",
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }

    return [
        cond("MemoryPressure", False, "KubeletHasSufficientMemory", "enough memory"),
        cond("DiskPressure", False, "KubeletHasNoDiskPressure", "no disk pressure"),
        cond("PIDPressure", False, "KubeletHasSufficientPID", "enough PIDs"),
        cond("Ready", True, "KubeletReady", "kubetune node agent is posting ready status"),
    ]


def node_status(cfg: AgentConfig, name: str, host_ip: str) -> JSON:
    res = resources(cfg)
    return {
        "capacity": dict(res),
        "allocatable": dict(res),
        "conditions": conditions(),
        "addresses": [
            {"type": "InternalIP", "address": host_ip},
            {"type": "Hostname", "address": name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "architecture": "amd64",
            "operatingSystem": "linux",
            "osImage": "kubetune node agent (bubblewrap sandboxes)",
            "kernelVersion": "",
            "containerRuntimeVersion": "kubetune-real://0.1",
            "kubeletVersion": "",
            "kubeProxyVersion": "",
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
        },
    }


def node_manifest(cfg: AgentConfig, name: str, host_ip: str) -> JSON:
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kubetune-real",
        POOL_LABEL: NODE_POOL,
    }
    if cfg.gpus:
        labels.update({"nvidia.com/gpu.present": "true", "nvidia.com/gpu.count": str(cfg.gpus)})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {AGENT_ANNOTATION: str(cfg.state_dir)},
        },
        "spec": {"taints": [dict(TAINT)]},
        "status": node_status(cfg, name, host_ip),
    }


def lease_manifest(node: JSON, duration: int) -> JSON:
    name = node["metadata"]["name"]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": LEASE_NAMESPACE,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}
            ],
        },
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": duration,
            "renewTime": micro_now(),
        },
    }


class NodeKeeper:
    """Registers the nodes and keeps them Ready; reports which ones were deleted."""

    def __init__(self, api: KubeApi, cfg: AgentConfig, host_ip: str) -> None:
        self.api, self.cfg, self.host_ip = api, cfg, host_ip
        self.live: set[str] = set()

    def register(self) -> None:
        for name in self.cfg.node_names:
            doc = node_manifest(self.cfg, name, self.host_ip)
            try:
                node = self.api.create("/api/v1/nodes", doc)
            except ApiError as exc:
                if exc.code != 409:
                    raise
                node = self.api.merge_patch(
                    f"/api/v1/nodes/{name}", {"metadata": doc["metadata"], "spec": doc["spec"]}
                )
            self.api.merge_patch(f"/api/v1/nodes/{name}/status", {"status": doc["status"]})
            lease = lease_manifest(node, self.cfg.lease_seconds)
            path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases"
            try:
                self.api.create(path, lease)
            except ApiError as exc:
                if exc.code != 409:
                    raise
                self.api.merge_patch(f"{path}/{name}", {"spec": lease["spec"]})
            self.live.add(name)

    def heartbeat(self) -> set[str]:
        """Renew every live node's Lease and Ready condition; returns the nodes found
        deleted (they are not re-registered: a deleted node is a lost node)."""
        gone: set[str] = set()
        leases = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases"
        for name in sorted(self.live):
            try:
                node = self.api.merge_patch(
                    f"/api/v1/nodes/{name}/status", {"status": {"conditions": conditions()}}
                )
            except ApiError as exc:
                if exc.code == 404:
                    gone.add(name)
                else:
                    log.warning("status heartbeat of %s failed: %s", name, exc)
                continue
            try:
                self.api.merge_patch(f"{leases}/{name}", {"spec": {"renewTime": micro_now()}})
            except ApiError as exc:
                log.warning("lease of %s not renewed: %s", name, exc)
                if exc.code == 404:
                    self.api.create(leases, lease_manifest(node, self.cfg.lease_seconds))
        self.live -= gone
        return gone

    def unregister(self) -> None:
        """Delete the Nodes and Leases (best effort, quickly: the API server may be going
        away with the whole cluster)."""
        self.api.timeout = 3.0
        for name in sorted(self.live):
            for path in (
                f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{name}",
                f"/api/v1/nodes/{name}",
            ):
                try:
                    self.api.delete(path)
                except ApiError as exc:
                    log.info("deleting %s: %s", path, exc)
                    if exc.code == 0:
                        self.live.clear()
                        return
        self.live.clear()
