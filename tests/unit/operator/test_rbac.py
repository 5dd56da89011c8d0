"""The operator's RBAC (issue 9, findings 9 and 11): only the verbs it uses, and in
watched-namespace mode no namespaced rights outside the watched namespaces."""

from __future__ import annotations

from typing import Any

import yaml
from typer.testing import CliRunner

from kubetune.cli.main import app
from kubetune_operator.rbac import manifest_text, render_rbac


def grants(rules: list[dict[str, Any]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault(f"{group}/{resource}", set()).update(rule["verbs"])
    return out


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


EXPECTED = {
    # create: a FineTunePipeline's stage jobs; delete also retries a failed stage's job
    "kubetune.io/finetunejobs": {"list", "watch", "create", "delete"},
    "kubetune.io/finetunejobs/status": {"patch"},
    "kubetune.io/finetunejobs/finalizers": {"update"},
    "/pods": {"get", "list", "watch", "create", "delete", "patch"},
    "/configmaps": {"get", "create", "patch", "delete"},
    "/services": {"get", "create", "delete"},
    "networking.k8s.io/networkpolicies": {"get", "create", "delete"},
    "/events": {"create", "patch"},  # patch: a repeat within the window bumps its count
    "kueue.x-k8s.io/workloads": {"get", "list", "watch", "create", "delete"},
    "kueue.x-k8s.io/workloads/status": {"patch"},  # release an evicted one, finish it
    "/nodes": {"list", "watch"},
    "kueue.x-k8s.io/resourceflavors": {"list", "watch"},  # the admitted flavor's placement
    "scheduling.k8s.io/priorityclasses": {"get"},  # the Workload's priority value
    # Team defaults, read when a job is first resolved (profiles.py).
    "kubetune.io/finetuneprofiles": {"list"},
    "kubetune.io/clusterfinetuneprofiles": {"list"},
    "/namespaces": {"get"},  # their namespaceSelector
    # ModelRollouts (rollout/runtime.py): read fresh, annotations removed, status written.
    "kubetune.io/modelrollouts": {"get", "list", "watch", "patch"},
    "kubetune.io/modelrollouts/status": {"patch"},
    "gateway.networking.k8s.io/httproutes": {"get", "update"},  # the weights
    # FineTunePipelines (pipeline/runtime.py): read fresh, status written, jobs owned.
    "kubetune.io/finetunepipelines": {"get", "list", "watch"},
    "kubetune.io/finetunepipelines/status": {"patch"},
    "kubetune.io/finetunepipelines/finalizers": {"update"},
}
#: The read-only cluster-scoped grants (the rest may be per watched namespace).
CLUSTER_WIDE = (
    "/nodes",
    "kueue.x-k8s.io/resourceflavors",
    "scheduling.k8s.io/priorityclasses",
    "kubetune.io/clusterfinetuneprofiles",
    "/namespaces",
)


def test_cluster_role_grants_exactly_what_the_operator_uses() -> None:
    (role,) = [d for d in docs(manifest_text()) if d["kind"] == "ClusterRole"]
    assert grants(role["rules"]) == EXPECTED
    assert not any("*" in r["verbs"] or "*" in r["resources"] for r in role["rules"])
    assert "/secrets" not in grants(role["rules"])


def test_watched_namespace_mode_uses_roles() -> None:
    out = docs(render_rbac(["team-a", "team-b"]))
    (cluster_role,) = [d for d in out if d["kind"] == "ClusterRole"]
    assert grants(cluster_role["rules"]) == {k: EXPECTED[k] for k in CLUSTER_WIDE}
    roles = {d["metadata"]["namespace"]: d for d in out if d["kind"] == "Role"}
    assert set(roles) == {"team-a", "team-b", "kubetune-system"}  # + the leader Lease Role
    for ns in ("team-a", "team-b"):
        expected = {k: v for k, v in EXPECTED.items() if k not in CLUSTER_WIDE}
        assert grants(roles[ns]["rules"]) == expected
    bindings = {d["metadata"]["namespace"]: d for d in out if d["kind"] == "RoleBinding"}
    for ns in ("team-a", "team-b"):
        assert bindings[ns]["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": roles[ns]["metadata"]["name"],
        }
        assert bindings[ns]["subjects"][0]["name"] == "kubetune-operator"
    # nothing namespaced is granted cluster-wide
    (crb,) = [d for d in out if d["kind"] == "ClusterRoleBinding"]
    assert crb["roleRef"]["name"] == cluster_role["metadata"]["name"]


def test_cli_prints_both_forms() -> None:
    runner = CliRunner()
    plain = runner.invoke(app, ["operator", "rbac"])
    assert plain.exit_code == 0 and plain.output == manifest_text()
    scoped = runner.invoke(app, ["operator", "rbac", "--namespace", "ml"])
    assert scoped.exit_code == 0, scoped.output
    kinds = [(d["kind"], d["metadata"].get("namespace")) for d in docs(scoped.output)]
    assert ("Role", "ml") in kinds and ("RoleBinding", "ml") in kinds
