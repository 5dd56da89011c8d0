"""The operator's tenant policy (issue 9, finding 3): a FineTuneJob is not a way to create
arbitrary pods. Violations fail the job before any pod exists, with a message that names
what was refused and the setting that would allow it."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api import FineTuneJob
from kubetune_operator.policy import violations
from kubetune_operator.settings import OperatorSettings, image_repository
from tests.unit.operator.conftest import fast_settings, job_manifest


def spec_of(**spec: Any) -> Any:
    return FineTuneJob.model_validate(job_manifest(**spec)).spec


def test_defaults_admit_an_ordinary_job() -> None:
    settings = fast_settings()
    assert violations(spec_of(), settings) == []
    ok = spec_of(
        image=f"{image_repository(settings.trainer_image)}:9.9.9",
        resources={
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "priorityClassName": "training-high",
        },
    )
    assert violations(ok, settings) == []


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"image": "evil.example.com/miner:latest"}, "image 'evil.example.com/miner:latest'"),
        # a prefix of the trainer repository's name is not the repository
        ({"image": "kubetune/trainer-evil:1"}, "image 'kubetune/trainer-evil:1'"),
        ({"serviceAccountName": "cluster-admin-sa"}, "serviceAccountName 'cluster-admin-sa'"),
        ({"resources": {"priorityClassName": "system-node-critical"}}, "system-node-critical"),
        ({"resources": {"tolerations": [{"operator": "Exists"}]}}, "tolerates every taint"),
        (
            {
                "resources": {
                    "tolerations": [
                        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}
                    ]
                }
            },
            "node-role.kubernetes.io/control-plane",
        ),
    ],
)
def test_default_policy_refuses(spec: dict[str, Any], needle: str) -> None:
    found = violations(spec_of(**spec), fast_settings())
    assert len(found) == 1 and needle in found[0], found
    assert "KUBETUNE_OPERATOR_" in found[0], "names the setting that would allow it"


def test_allow_lists_are_configurable() -> None:
    spec = spec_of(
        image="registry.example.com/team/trainer:2",
        serviceAccountName="trainer",
        resources={
            "priorityClassName": "system-cluster-critical",
            "tolerations": [
                {"operator": "Exists"},
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists"},
            ],
        },
    )
    assert len(violations(spec, fast_settings())) == 5
    globbed = fast_settings(
        allowed_images=["registry.example.com/team/*"],
        allowed_service_accounts=["trainer"],
        allowed_priority_classes=["*"],
        allowed_toleration_keys=["*"],
        allow_tolerate_all_taints=True,
    )
    remaining = violations(spec, globbed)
    assert len(remaining) == 2, "a glob never admits system-* or kubernetes.io keys"
    literal = globbed.model_copy(
        update={
            "allowed_priority_classes": ["system-cluster-critical"],
            "allowed_toleration_keys": ["node.kubernetes.io/not-ready"],
        }
    )
    assert violations(spec, literal) == []


def test_settings_from_environment() -> None:
    settings = OperatorSettings.from_env(
        {
            "KUBETUNE_OPERATOR_ALLOWED_IMAGES": "a.io/x:*, b.io/*",
            "KUBETUNE_OPERATOR_ALLOWED_SERVICE_ACCOUNTS": "default,trainer",
            "KUBETUNE_OPERATOR_ALLOW_TOLERATE_ALL_TAINTS": "true",
        }
    )
    assert settings.image_patterns() == ["a.io/x:*", "b.io/*"]
    assert settings.allowed_service_accounts == ["default", "trainer"]
    assert settings.allow_tolerate_all_taints is True


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("kubetune/trainer:0.1.0", "kubetune/trainer"),
        ("registry:5000/team/trainer", "registry:5000/team/trainer"),
        ("registry:5000/team/trainer:1@sha256:abc", "registry:5000/team/trainer"),
    ],
)
def test_image_repository(image: str, repository: str) -> None:
    assert image_repository(image) == repository


def test_violating_job_fails_before_any_pod(make_cluster: Any) -> None:
    c = make_cluster(
        image="evil.example.com/miner:1",
        resources={"priorityClassName": "system-node-critical"},
    )
    plan = c.step()
    assert plan.pods_to_create() == [] and c.pods == {}
    assert c.status["phase"] == "Failed"
    failed = c.condition("Failed")
    assert failed["reason"] == "ForbiddenByPolicy"
    assert "evil.example.com/miner:1" in failed["message"]
    assert "system-node-critical" in failed["message"]
    assert c.condition("Validated")["reason"] == "ForbiddenByPolicy"
    assert c.settle().actions == [], "a permanent verdict: nothing is retried"
