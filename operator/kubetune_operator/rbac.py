"""The operator's RBAC manifest (``rbac.yaml``), cluster-wide or per watched namespace.

``rbac.yaml`` is the cluster-wide form: one ClusterRole. An operator that serves only some
namespaces (``--namespace``) needs its namespaced rights only there, so
:func:`render_rbac` turns every namespaced rule of that ClusterRole into a Role and a
RoleBinding in each watched namespace; only the rules on cluster-scoped resources (nodes)
stay in a ClusterRole. The rules themselves are written once, in ``rbac.yaml``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from importlib import resources
from typing import Any

import yaml

#: Resources in rbac.yaml's ClusterRole that are not namespaced.
CLUSTER_SCOPED = frozenset(
    {"nodes", "resourceflavors", "priorityclasses", "clusterfinetuneprofiles", "namespaces"}
)


def manifest_text() -> str:
    """``rbac.yaml`` as shipped (the cluster-wide form)."""
    return resources.files("kubetune_operator").joinpath("rbac.yaml").read_text()


def _documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(manifest_text()) if d]


def _in_namespace(metadata: dict[str, Any], namespace: str) -> dict[str, Any]:
    meta = copy.deepcopy(metadata)
    return {"name": meta.pop("name"), "namespace": namespace, **meta}


def render_rbac(namespaces: Sequence[str] = ()) -> str:
    """The RBAC for an operator serving ``namespaces`` (empty: cluster-wide, ``rbac.yaml``
    unchanged)."""
    if not namespaces:
        return manifest_text()
    docs = _documents()
    out: list[dict[str, Any]] = []
    for doc in docs:
        kind = doc["kind"]
        if kind == "ClusterRole":
            cluster_rules = [r for r in doc["rules"] if set(r["resources"]) <= CLUSTER_SCOPED]
            namespaced_rules = [r for r in doc["rules"] if not set(r["resources"]) & CLUSTER_SCOPED]
            mixed = [r for r in doc["rules"] if r not in cluster_rules + namespaced_rules]
            if mixed:  # pragma: no cover - rbac.yaml keeps them apart
                raise ValueError(f"rules mixing scopes: {mixed}")
            if cluster_rules:
                cluster_role = copy.deepcopy(doc)
                cluster_role["rules"] = cluster_rules
                out.append(cluster_role)
            for namespace in dict.fromkeys(namespaces):
                role = {
                    "apiVersion": doc["apiVersion"],
                    "kind": "Role",
                    "metadata": _in_namespace(doc["metadata"], namespace),
                    "rules": copy.deepcopy(namespaced_rules),
                }
                out.append(role)
        elif kind == "ClusterRoleBinding":
            out.append(doc)  # binds the nodes-only ClusterRole
            for namespace in dict.fromkeys(namespaces):
                out.append(
                    {
                        "apiVersion": doc["apiVersion"],
                        "kind": "RoleBinding",
                        "metadata": _in_namespace(doc["metadata"], namespace),
                        "roleRef": {**doc["roleRef"], "kind": "Role"},
                        "subjects": copy.deepcopy(doc["subjects"]),
                    }
                )
        else:
            out.append(doc)
    head = (
        "# Least-privilege RBAC of the kubetune operator, watched-namespace mode\n"
        f"# (kubetune operator rbac --namespace ...: {', '.join(dict.fromkeys(namespaces))}).\n"
        "# Namespaced rights only in the watched namespaces; read-only nodes cluster-wide.\n"
        "# Why each rule: see `kubetune operator rbac` without --namespace.\n"
    )
    return head + "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in out)
