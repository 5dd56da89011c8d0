"""Issue 9 against the real API server, with the operator on exactly ``rbac.yaml``: the
per-job NetworkPolicy is created (and owned), env values stay out of the ConfigMap, and a
job that asks for more than the tenant policy allows fails before any pod exists."""

from __future__ import annotations

import json

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
