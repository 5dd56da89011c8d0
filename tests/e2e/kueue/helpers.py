"""Helpers for the Kueue e2e tests (the ``kueue`` fixture is in conftest.py beside this file;
import these as ``from tests.e2e.kueue.helpers import ...``).

* :func:`quota_manifests`: a ResourceFlavor, a ClusterQueue and a LocalQueue.
* :func:`condition` / :func:`is_admitted`: read a Workload's status.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from kubetune.devcluster.kueue import API_VERSION, KueueRunner, KueueState
from kubetune.devcluster.testing import Cluster, wait_until

Manifest = str | dict[str, Any] | list[dict[str, Any]]


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    """The status condition ``type_`` of ``obj`` (None if absent)."""
    for cond in obj.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def is_admitted(workload: dict[str, Any]) -> bool:
    """Kueue admitted it: ``status.admission`` set and condition Admitted=True."""
    cond = condition(workload, "Admitted")
    return bool(workload.get("status", {}).get("admission")) and bool(
        cond and cond["status"] == "True"
    )


def quota_manifests(
    namespace: str,
    *,
    cluster_queue: str,
    local_queue: str = "default",
    flavor: str = "default-flavor",
    gpus: int = 16,
    cpu: str = "256",
    memory: str = "2Ti",
    cohort: str | None = None,
    preemption: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """A ResourceFlavor, a ClusterQueue (nominal quota of GPUs, CPU and memory) admitting every
    namespace, and a LocalQueue in ``namespace`` pointing at it."""
    cq_spec: dict[str, Any] = {
        "namespaceSelector": {},
        "resourceGroups": [
            {
                "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                "flavors": [
                    {
                        "name": flavor,
                        "resources": [
                            {"name": "cpu", "nominalQuota": cpu},
                            {"name": "memory", "nominalQuota": memory},
                            {"name": "nvidia.com/gpu", "nominalQuota": gpus},
                        ],
                    }
                ],
            }
        ],
    }
    if cohort:
        cq_spec["cohortName"] = cohort
    if preemption:
        cq_spec["preemption"] = preemption
    return [
        {"apiVersion": API_VERSION, "kind": "ResourceFlavor", "metadata": {"name": flavor}},
        {
            "apiVersion": API_VERSION,
            "kind": "ClusterQueue",
            "metadata": {"name": cluster_queue},
            "spec": cq_spec,
        },
        {
            "apiVersion": API_VERSION,
            "kind": "LocalQueue",
            "metadata": {"name": local_queue, "namespace": namespace},
            "spec": {"clusterQueue": cluster_queue},
        },
    ]


@dataclass
class KueueEnv:
    """What the ``kueue`` fixture yields."""

    cluster: Cluster
    runner: KueueRunner
    state: KueueState

    def apply(self, manifest: Manifest, namespace: str | None = None) -> None:
        """``kubectl apply`` a YAML string, one object or a list of objects."""
        text = (
            manifest
            if isinstance(manifest, str)
            else yaml.safe_dump_all(manifest if isinstance(manifest, list) else [manifest])
        )
        self.cluster.kubectl("apply", "-f", "-", input=text, namespace=namespace)

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        """The object as JSON (``resource``: e.g. ``workloads.kueue.x-k8s.io``)."""
        proc = self.cluster.kubectl("get", resource, name, "-o", "json", namespace=namespace)
        return dict(json.loads(proc.stdout))

    def delete(self, resource: str, name: str, namespace: str | None = None) -> None:
        self.cluster.kubectl(
            "delete", resource, name, "--ignore-not-found", "--wait=true", namespace=namespace
        )

    def workload(self, name: str, namespace: str) -> dict[str, Any]:
        return self.get("workloads.kueue.x-k8s.io", name, namespace)

    def wait_workload(
        self,
        name: str,
        namespace: str,
        predicate: Callable[[dict[str, Any]], bool],
        *,
        timeout: float = 30.0,
        what: str = "",
    ) -> dict[str, Any]:
        """Poll the Workload until ``predicate`` holds; returns it."""
        seen: dict[str, Any] = {}

        def check() -> bool:
            seen["wl"] = self.workload(name, namespace)
            return predicate(seen["wl"])

        try:
            wait_until(check, timeout=timeout, interval=0.25, what=what or f"workload {name}")
        except AssertionError as exc:
            status = json.dumps(seen.get("wl", {}).get("status"), indent=1)
            raise AssertionError(
                f"{exc}\nlast status: {status}\nkueue log:\n{self.runner.log_tail()}"
            ) from None
        return dict(seen["wl"])
