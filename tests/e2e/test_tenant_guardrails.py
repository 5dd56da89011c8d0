"""Tenant guardrails on the real API server (issue 12, section 2): the chart's
ValidatingAdmissionPolicy, its per-tier binding and parameters ConfigMap, rendered with the
real helm, refuse a tenant's forbidden FineTuneJobs with the policy's message; the CRD's own
rule refuses a reserved env name; an allowed job is accepted. The operator enforces the same
tier on its own (a job admitted before its namespace joined the tier) and runs what it allows.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.devcluster.testing import Cluster, wait_until
from tests.e2e.operator_helpers import (  # noqa: F401  (fixtures)
    CRD,
    OPERATOR_NAMESPACE,
    REPO,
    TRAINER_IMAGE,
    Operators,
    condition,
    finish_validation,
    manifest,
    ns_fixture,
    operator_fixture,
    operators_fixture,
    wait_phase,
    worker_pods,
)

CHART = REPO / "charts" / "kubetune"
TIER_KINDS = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "ConfigMap"}


def _apply(cluster: Cluster, doc: dict[str, Any], check: bool = False) -> Any:
    return cluster.kubectl("apply", "-f", "-", input=json.dumps(doc), check=check)


def _wait_for_policy(cluster: Cluster, namespace: str) -> None:
    """A new binding takes a moment to become effective: wait until a forbidden job is
    refused. Each try creates a fresh job (re-applying an object the API server already
    stored is a no-op that no admission sees) and removes it if it got through."""
    tries = iter(range(1000))

    def refused() -> bool:
        name = f"probe-{next(tries)}"
        if _apply(cluster, job(namespace, name, image="docker.io/evil/miner:1")).returncode:
            return True
        cluster.kubectl("delete", "ftj", name, "--ignore-not-found", namespace=namespace)
        return False

    wait_until(refused, timeout=60, what="the tenant policy binding to take effect")


@pytest.fixture
def tier(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A tier ``t-<id>`` of the chart's tenantPolicies, installed (policy, binding, params) with
    ``namespace`` labelled into it; yields (namespace, tier)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    # kubectl wait errors out (instead of waiting) while a new CRD has no conditions yet.
    wait_until(
        lambda: cluster.kubectl(
            "wait", "--for=condition=Established", "crd/finetunejobs.kubetune.io",
            "--timeout=60s", check=False,
        ).returncode == 0,
        timeout=90,
        what="the FineTuneJob CRD to be established",
    )  # fmt: skip
    suffix = uuid.uuid4().hex[:6]
    name, release_ns = f"t-{suffix}", f"kt-tier-{suffix}"
    cluster.kubectl("create", "namespace", release_ns)
    values = {
        "tenantPolicies": [
            {
                "name": name,
                "namespaceSelector": {"matchLabels": {"e2e.kubetune.io/tier": name}},
                "allowedImages": ["registry.example/ml/"],
                "allowedServiceAccounts": ["default", "trainer"],
                "allowedPriorityClasses": ["training-low"],
                "allowedTolerationKeys": ["nvidia.com/gpu"],
                "maxGPUsPerJob": 8,
                "maxNodesPerJob": 2,
                "maxGPUHoursPerJob": 50,
            }
        ]
    }
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    rendered = cluster.helm(
        "template", f"r{suffix}", str(CHART), "--namespace", release_ns, "-f", str(path)
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in TIER_KINDS]
    docs = [d for d in docs if d["kind"] != "ConfigMap" or "tenant" in d["metadata"]["name"]]
    assert {d["kind"] for d in docs} == TIER_KINDS
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    cluster.kubectl("label", "namespace", namespace, f"e2e.kubetune.io/tier={name}")
    try:
        yield namespace, name
    finally:
        for d in docs:
            if d["kind"] != "ConfigMap":
                cluster.kubectl(
                    "delete", d["kind"].lower(), d["metadata"]["name"], "--ignore-not-found",
                    check=False,
                )  # fmt: skip
        cluster.kubectl("delete", "namespace", release_ns, "--wait=false", check=False)


def job(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    doc = manifest(name, namespace)
    doc["spec"].pop("image", None)
    doc["spec"]["resources"] = {"nodes": 1, "gpusPerNode": 4, "cpu": "1", "memory": "1Gi"}
    doc["spec"]["runPolicy"] = {**doc["spec"].get("runPolicy", {}), "gpuHourBudget": 10}
    for key, value in spec.items():
        base = doc["spec"].get(key)
        doc["spec"][key] = {**base, **value} if isinstance(base, dict) else copy.deepcopy(value)
    return doc


FORBIDDEN: list[tuple[str, dict[str, Any], str]] = [
    ("image", {"image": "docker.io/evil/miner:1"},
     "spec.image 'docker.io/evil/miner:1' is not allowed for namespaces of tier '{tier}' "
     "(allowed prefixes: registry.example/ml/); ask your platform team"),
    ("sa", {"serviceAccountName": "cluster-admin"},
     "spec.serviceAccountName 'cluster-admin' is not allowed for namespaces of tier '{tier}'"),
    ("prio", {"resources": {"priorityClassName": "system-node-critical"}},
     "spec.resources.priorityClassName 'system-node-critical' is not allowed"),
    ("tol", {"resources": {"tolerations": [{"operator": "Exists"}]}},
     "spec.resources.tolerations: (no key: every taint) not allowed for namespaces of tier"),
    ("tolkey", {"resources": {"tolerations": [
        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]}},
     "'node-role.kubernetes.io/control-plane' not allowed"),
    ("gpus", {"resources": {"nodes": 2, "gpusPerNode": 8}},
     "the job asks for 16 GPUs (spec.resources.nodes 2 x gpusPerNode 8); at most 8 are allowed"),
    ("nodes", {"resources": {"nodes": 4, "gpusPerNode": 1}},
     "spec.resources.nodes 4 is more than the 2 allowed"),
    ("nobudget", {"runPolicy": {"gpuHourBudget": None}},
     "spec.runPolicy.gpuHourBudget is not set; it must be set and at most 50 GPU-hours"),
    ("budget", {"runPolicy": {"gpuHourBudget": 80}},
     "spec.runPolicy.gpuHourBudget is 80"),
]  # fmt: skip


def test_forbidden_manifests_are_refused_with_the_policy_message(
    cluster: Cluster, tier: tuple[str, str]
) -> None:
    namespace, name = tier
    _wait_for_policy(cluster, namespace)
    for label, spec, expected in FORBIDDEN:
        doc = job(namespace, f"bad-{label}", **spec)
        if spec.get("runPolicy", {}).get("gpuHourBudget", 1) is None:
            doc["spec"]["runPolicy"].pop("gpuHourBudget")
        proc = _apply(cluster, doc)
        assert proc.returncode != 0, f"{label} was accepted"
        assert expected.format(tier=name) in proc.stderr, (label, proc.stderr)
        assert "ValidatingAdmissionPolicy '" in proc.stderr or "denied" in proc.stderr
    # The CRD's own rule: user env never overrides what the operator or torchrun sets.
    env = job(namespace, "bad-env", env=[{"name": "KUBETUNE_CONFIG", "value": "/tmp/x"}])
    proc = _apply(cluster, env)
    assert proc.returncode != 0
    assert "spec.env[0].name" in proc.stderr and "'KUBETUNE_CONFIG' is set by the operator" in (
        proc.stderr
    )
    # An allowed job is accepted.
    ok = job(
        namespace,
        "allowed",
        image="registry.example/ml/trainer:1",
        serviceAccountName="trainer",
        resources={
            "priorityClassName": "training-low",
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        },
    )
    proc = _apply(cluster, ok)
    assert proc.returncode == 0, proc.stderr
    # Metadata-only edits of an admitted job pass; spec edits are checked again.
    cluster.kubectl("annotate", "ftj", "allowed", "team=ml", namespace=namespace)
    patched = cluster.kubectl(
        "patch", "ftj", "allowed", "--type=merge", "-p",
        json.dumps({"spec": {"image": "docker.io/evil/miner:2"}}), namespace=namespace,
        check=False,
    )  # fmt: skip
    assert patched.returncode != 0, "a spec edit is checked again"
    assert "spec.image 'docker.io/evil/miner:2' is not allowed" in patched.stderr, patched.stderr


def test_other_namespaces_are_not_governed(
    cluster: Cluster, tier: tuple[str, str], tmp_path: Path
) -> None:
    namespace, _ = tier
    _wait_for_policy(cluster, namespace)
    other = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", other)
    try:
        proc = _apply(cluster, job(other, "free", image="docker.io/any/image:1"))
        assert proc.returncode == 0, proc.stderr
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_the_operator_enforces_the_tier_and_an_allowed_job_runs(
    cluster: Cluster, operator: Operators, ns: str, tmp_path: Path
) -> None:
    """Defence in depth: with only the tier's parameters installed (no admission policy, as
    for a job the API server admitted before its namespace joined the tier), the operator
    refuses what the tier forbids before any pod exists, and runs what it allows."""
    name = f"t-{uuid.uuid4().hex[:6]}"
    values = {
        "tenantPolicies": [
            {
                "name": name,
                "namespaceSelector": {"matchLabels": {"e2e.kubetune.io/tier": name}},
                "allowedImages": [TRAINER_IMAGE.split("/")[0] + "/"],
                "maxGPUsPerJob": 8,
                "maxGPUHoursPerJob": 50,
            }
        ]
    }
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    rendered = cluster.helm(
        "template", "tiers", str(CHART), "--namespace", OPERATOR_NAMESPACE, "-f", str(path)
    ).stdout
    (params,) = [
        d
        for d in yaml.safe_load_all(rendered)
        if d and d["kind"] == "ConfigMap" and "tenant" in d["metadata"]["name"]
    ]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(params))
    cluster.kubectl("label", "namespace", ns, f"e2e.kubetune.io/tier={name}")
    try:
        time.sleep(11)  # the operator caches a namespace's tiers for 10 s
        big = job(ns, "too-big", resources={"nodes": 2, "gpusPerNode": 8})
        allowed = job(ns, "within-tier")
        for doc in (big, allowed):
            _apply(cluster, doc, check=True)
        status = wait_phase(cluster, ns, "too-big", "Failed", timeout=60)
        failed = condition(status, "Failed")
        assert failed["reason"] == "ForbiddenByPolicy", failed
        assert f"tier '{name}'" in failed["message"] and "16 GPUs" in failed["message"]
        assert worker_pods(cluster, ns, "too-big") == [], "refused before any pod exists"
        finish_validation(cluster, ns, "within-tier")
        wait_phase(cluster, ns, "within-tier", "Running", timeout=60)
    finally:
        cluster.kubectl(
            "delete", "configmap", params["metadata"]["name"], "--ignore-not-found",
            namespace=OPERATOR_NAMESPACE, check=False,
        )  # fmt: skip
