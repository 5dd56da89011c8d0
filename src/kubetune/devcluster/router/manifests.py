"""Manifests for tests and demos: a Service + EndpointSlice for a local process, a route."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune.devcluster.router.routes import GROUP


def local_backend_manifests(
    name: str, namespace: str, host: str, port: int, *, service_port: int = 80
) -> list[dict[str, Any]]:
    """A selector-less Service ``name`` (port ``service_port``, named ``http``) and the
    EndpointSlice that points it at ``host:port``: how a process outside the cluster (a local
    model server) becomes a backendRef target. The API server refuses loopback endpoint
    addresses: ``host`` must be an address of this machine such as
    :func:`kubetune.devcluster.kueue.host_ipv4`."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "ports": [
                    {"name": "http", "port": service_port, "protocol": "TCP", "targetPort": port}
                ]
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {
                    "kubernetes.io/service-name": name,
                    # keeps the EndpointSlice controller's hands off it
                    "endpointslice.kubernetes.io/managed-by": "kubetune-dev-router",
                },
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [host], "conditions": {"ready": True}}],
        },
    ]


def weighted_route(
    name: str, namespace: str, weights: Mapping[str, int], *, port: int = 80
) -> dict[str, Any]:
    """An HTTPRoute with one rule splitting all traffic between Services by ``weights``."""
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "rules": [
                {
                    "backendRefs": [
                        {"name": svc, "port": port, "weight": w} for svc, w in weights.items()
                    ]
                }
            ]
        },
    }
