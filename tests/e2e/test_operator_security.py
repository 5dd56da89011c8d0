"""Issue 9 against the real API server, with the operator on exactly ``rbac.yaml``: the
per-job NetworkPolicy is created (and owned), env values stay out of the ConfigMap, and a
job that asks for more than the tenant policy allows fails before any pod exists."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubetune.devcluster.testing import Cluster
from tests.e2e.operator_helpers import (  # noqa: F401  (fixtures)
    Operators,
    apply,
    condition,
    finish_validation,
    manifest,
    ns_fixture,
    operator_fixture,
    operators_fixture,
    pods,
    wait_phase,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def test_network_policy_and_no_env_in_config(
    cluster: Cluster, ns: str, operator: Operators
) -> None:
    env = [{"name": "DEBUG_LEVEL", "value": "private-value-9f2"}]
    apply(cluster, manifest("sec", ns, env=env))
    finish_validation(cluster, ns, "sec")
    wait_phase(cluster, ns, "sec", "Running")
    uid = cluster.kubectl("get", "ftj", "sec", "-o", "jsonpath={.metadata.uid}", namespace=ns)
    policy = json.loads(
        cluster.kubectl("get", "networkpolicy", "sec", "-o", "json", namespace=ns).stdout
    )
    assert policy["metadata"]["ownerReferences"][0]["uid"] == uid.stdout
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    config = cluster.kubectl("get", "configmap", "sec-config", "-o", "json", namespace=ns).stdout
    assert "private-value-9f2" not in config
    for pod in pods(cluster, ns, "sec", role="worker"):
        container = pod["spec"]["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert {"name": "DEBUG_LEVEL", "value": "private-value-9f2"} in container["env"]


def test_forbidden_job_fails_without_pods(cluster: Cluster, ns: str, operator: Operators) -> None:
    apply(cluster, manifest("bad", ns, image="evil.example.com/miner:1"))
    status = wait_phase(cluster, ns, "bad", "Failed")
    failed = condition(status, "Failed")
    assert failed["reason"] == "ForbiddenByPolicy"
    assert "evil.example.com/miner:1" in failed["message"]
    assert pods(cluster, ns, "bad") == []


def test_a_refused_pod_create_is_named_in_a_condition(
    cluster: Cluster, ns: str, operator: Operators
) -> None:
    """A job whose ServiceAccount does not exist: the API server's refusal (its own words)
    appears in a condition within seconds instead of only in FailedCreate Events; once the
    ServiceAccount exists the job moves on by itself."""
    from kubetune.devcluster.testing import wait_until
    from tests.e2e.operator_helpers import job_status

    apply(cluster, manifest("nosa", ns, serviceAccountName="e2e-missing"))

    def refused() -> dict[str, Any] | None:
        cond = condition(job_status(cluster, ns, "nosa"), "PodCreationFailed")
        return cond if cond.get("status") == "True" else None

    cond = wait_until(refused, timeout=30, what="PodCreationFailed=True")
    assert 'serviceaccount "e2e-missing" not found' in str(cond["message"])
    status = job_status(cluster, ns, "nosa")
    assert status["phase"] == "Validating"
    assert status["progress"]["summary"].startswith("blocked: pod creation refused")
    cluster.kubectl("create", "serviceaccount", "e2e-missing", namespace=ns)
    wait_until(
        lambda: pods(cluster, ns, "nosa", role="validation"), timeout=90, what="validation pod"
    )
    wait_until(
        lambda: not condition(job_status(cluster, ns, "nosa"), "PodCreationFailed"),
        timeout=30,
        what="the condition to go",
    )
