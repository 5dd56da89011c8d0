"""The chart's RBAC is exactly operator/kubetune_operator/rbac.yaml (`kubetune operator rbac`),
cluster-wide and per watched namespace: same objects, same rules, same bindings.

Release ``kubetune`` in ``kubetune-system`` gives the chart's objects the names and
namespace of rbac.yaml, so they are compared object by object.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from kubetune_operator.rbac import render_rbac
from tests.unit.chart.chart_helpers import render

RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def _key(doc: dict[str, Any]) -> tuple[str, str, str]:
    meta = doc["metadata"]
    return doc["kind"], meta.get("namespace", ""), meta["name"]


def _canonical(doc: dict[str, Any]) -> dict[str, Any]:
    """What grants rights: rules (as a set), roleRef, subjects."""
    out: dict[str, Any] = {}
    if "rules" in doc:
        out["rules"] = sorted(
            (
                tuple(r.get("apiGroups", [])),
                tuple(r.get("resources", [])),
                tuple(sorted(r.get("verbs", []))),
                tuple(r.get("resourceNames", [])),
            )
            for r in doc["rules"]
        )
    for field in ("roleRef", "subjects", "automountServiceAccountToken"):
        if field in doc:
            out[field] = doc[field]
    return out


def _objects(docs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {_key(d): _canonical(d) for d in docs if d and d["kind"] in RBAC_KINDS}


@pytest.mark.parametrize(
    "namespaces", [[], ["team-a", "team-b"]], ids=["cluster-wide", "watched-namespaces"]
)
def test_chart_rbac_is_exactly_the_operators(namespaces: list[str]) -> None:
    expected = _objects(list(yaml.safe_load_all(render_rbac(namespaces))))
    chart = _objects(render({"watchNamespaces": namespaces}))
    assert chart.keys() == expected.keys()
    for key, value in expected.items():
        assert chart[key] == value, key


def test_watched_namespaces_leave_only_nodes_cluster_wide() -> None:
    docs = render({"watchNamespaces": ["team-a"]})
    cluster_role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {
        "nodes",
        "resourceflavors",
        "priorityclasses",
        "clusterfinetuneprofiles",  # team defaults (read-only)
        "namespaces",  # their namespaceSelector (get only)
    }
    assert {rule_verb for rule in cluster_role["rules"] for rule_verb in rule["verbs"]} == {
        "get",  # priorityclasses and namespaces only
        "list",
        "watch",
    }
    # No Role anywhere but the watched namespace and the release namespace (the Lease).
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] == "Role"} == {
        "team-a",
        "kubetune-system",
    }


def test_no_secrets_access_in_any_mode() -> None:
    for namespaces in ([], ["team-a"]):
        for doc in render({"watchNamespaces": namespaces}):
            for rule in doc.get("rules", []):
                assert "secrets" not in rule["resources"]
                assert "*" not in rule["resources"] and "*" not in rule["verbs"]
