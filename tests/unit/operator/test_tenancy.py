"""Per-tenant guardrails in the operator (issue 12, section 2): the chart's tier ConfigMaps
read back, namespaces matched by label selector, every limit checked with a message naming
the field, the value, what is allowed and the tier; and the lifecycle refusing a violating
job before any pod exists."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest
import yaml

from kubetune.api import FineTuneJob
from kubetune_operator import tenancy
from kubetune_operator.kube import ApiError
from kubetune_operator.lifecycle import decide
from kubetune_operator.tenancy import LabelSelector, TenantPolicies, TenantTier
from tests.unit.operator.conftest import FakeCluster, fast_settings, job_manifest


def spec_of(**spec: Any) -> Any:
    return FineTuneJob.model_validate(job_manifest(**spec)).spec


def config_map(tier: str, selector: dict[str, Any] | None = None, **data: str) -> dict[str, Any]:
    """A tier's parameters ConfigMap as the chart renders it."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"kubetune-tenant-{tier}",
            "namespace": "kubetune-system",
            "labels": {tenancy.TIER_LABEL: tier},
        },
        "data": {tenancy.SELECTOR_KEY: json.dumps(selector or {}), **data},
    }


TEAM_A = config_map(
    "team-a",
    {"matchLabels": {"kubetune.io/tier": "team-a"}},
    allowedImages="registry.example/ml/, kubetune/trainer:",
    allowedServiceAccounts="default,trainer",
    allowedPriorityClasses="training-low,training-high",
    allowedTolerationKeys="nvidia.com/gpu",
    maxGPUsPerJob="16",
    maxNodesPerJob="2",
    maxGPUHoursPerJob="100",
)


def tier_a() -> TenantTier:
    return TenantTier.from_config_map(TEAM_A)


# -- reading tiers and matching namespaces -------------------------------------------------------
def test_config_map_becomes_a_tier() -> None:
    tier = tier_a()
    assert tier.error is None
    assert tier.name == "team-a"
    assert tier.allowed_images == ("registry.example/ml/", "kubetune/trainer:")
    assert tier.allowed_service_accounts == ("default", "trainer")
    assert (tier.max_gpus_per_job, tier.max_nodes_per_job) == (16, 2)
    assert tier.max_gpu_hours_per_job == 100.0
    unlimited = TenantTier.from_config_map(config_map("open"))
    assert unlimited.allowed_images is None and unlimited.max_gpus_per_job is None
    assert TenantTier.from_config_map(config_map("none", allowedImages="")).allowed_images == ()


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({}, {}, True),  # the empty selector: every namespace
        ({"matchLabels": {"tier": "a"}}, {"tier": "a", "x": "y"}, True),
        ({"matchLabels": {"tier": "a"}}, {"tier": "b"}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
         {"tier": "b"}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]},
         {"tier": "a"}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, {}, True),
        ({"matchLabels": {"tier": "a"},
          "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]},
         {"tier": "a", "env": "dev"}, False),
    ],
)  # fmt: skip
def test_label_selector(selector: dict[str, Any], labels: dict[str, str], expected: bool) -> None:
    assert LabelSelector.parse(selector).matches(labels) is expected


def test_every_matching_tier_applies() -> None:
    gpu = TenantTier.from_config_map(
        config_map("small-gpu", {"matchLabels": {"gpu": "small"}}, maxGPUsPerJob="4")
    )
    tiers = [tier_a(), gpu]
    assert tenancy.applicable(tiers, {"kubetune.io/tier": "team-a", "gpu": "small"}) == (
        tiers[0],
        gpu,
    )
    assert tenancy.applicable(tiers, {"kubetune.io/tier": "team-b"}) == ()
    found = tenancy.violations(spec_of(), tenancy.applicable(tiers, {"gpu": "small"}))
    assert (
        len(found) == 1 and "at most 4 are allowed for namespaces of tier 'small-gpu'" in (found[0])
    )


@pytest.mark.parametrize(
    "data",
    [
        {tenancy.SELECTOR_KEY: "{not json"},
        {tenancy.SELECTOR_KEY: json.dumps({"matchExpressions": [{"key": "a", "operator": "Is"}]})},
        {tenancy.MAX_GPUS_KEY: "lots"},
        {tenancy.MAX_GPU_HOURS_KEY: "-1"},
    ],
)
def test_unreadable_tier_fails_closed(data: dict[str, str]) -> None:
    body = config_map("broken")
    body["data"].update(data)
    tier = TenantTier.from_config_map(body)
    assert tier.error
    assert tier.governs({}), "a selector that cannot be read cannot exempt a namespace"
    found = tenancy.violations(spec_of(), [tier])
    assert len(found) == 1 and "tier 'broken'" in found[0] and "unreadable" in found[0]


# -- each limit ------------------------------------------------------------------------------------
def test_an_allowed_job_passes() -> None:
    ok = spec_of(
        image="registry.example/ml/trainer:2",
        serviceAccountName="trainer",
        resources={
            "priorityClassName": "training-low",
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        },
        runPolicy={"gpuHourBudget": 100},
    )
    assert tenancy.violations(ok, [tier_a()]) == []
    # no spec.image: the operator's default image, governed by its own policy
    assert tenancy.violations(spec_of(runPolicy={"gpuHourBudget": 5}), [tier_a()]) == []


@pytest.mark.parametrize(
    ("spec", "needles"),
    [
        (
            {"image": "registry.example/mlx/miner:1"},
            ["spec.image 'registry.example/mlx/miner:1' is not allowed",
             "allowed prefixes: registry.example/ml/, kubetune/trainer:"],
        ),
        (
            {"serviceAccountName": "admin"},
            ["spec.serviceAccountName 'admin' is not allowed", "allowed: default, trainer"],
        ),
        (
            {"resources": {"priorityClassName": "system-node-critical"}},
            ["priorityClassName 'system-node-critical' is not allowed",
             "allowed: training-low, training-high"],
        ),
        (
            {"resources": {"tolerations": [{"operator": "Exists"}]}},
            ["tolerations[0] has no key, so it tolerates every taint"],
        ),
        (
            {"resources": {"tolerations": [{"key": "node-role.kubernetes.io/control-plane",
                                            "operator": "Exists"}]}},
            ["tolerations[0].key 'node-role.kubernetes.io/control-plane' is not allowed",
             "allowed: nvidia.com/gpu"],
        ),
        (
            {"resources": {"nodes": 2, "gpusPerNode": 16}},
            ["asks for 32 GPUs (spec.resources.nodes 2 x gpusPerNode 16)", "at most 16"],
        ),
        (
            {"resources": {"nodes": 3, "gpusPerNode": 4}},
            ["spec.resources.nodes 3 is more than the 2 allowed"],
        ),
        (
            {"runPolicy": {"gpuHourBudget": 250}},
            ["spec.runPolicy.gpuHourBudget is 250; it must be set and at most 100"],
        ),
    ],
)  # fmt: skip
def test_each_limit_refuses_with_a_clear_message(spec: dict[str, Any], needles: list[str]) -> None:
    spec.setdefault("runPolicy", {"gpuHourBudget": 10})
    found = tenancy.violations(spec_of(**spec), [tier_a()])
    assert len(found) == 1, found
    for needle in needles:
        assert needle in found[0], found
    assert "for namespaces of tier 'team-a'" in found[0]
    assert found[0].endswith("ask your platform team")


def test_missing_budget_is_refused_when_the_tier_caps_gpu_hours() -> None:
    found = tenancy.violations(spec_of(), [tier_a()])
    assert found == [
        "spec.runPolicy.gpuHourBudget is not set; it must be set and at most 100 GPU-hours "
        "for namespaces of tier 'team-a'; ask your platform team"
    ]


def test_a_tier_without_lists_still_refuses_system_priority_and_keyless_tolerations() -> None:
    open_tier = TenantTier.from_config_map(config_map("open"))
    spec = spec_of(
        image="anything.example/x:1",
        serviceAccountName="whatever",
        resources={"priorityClassName": "system-cluster-critical", "tolerations": [
            {"operator": "Exists"}, {"key": "dedicated", "operator": "Exists"}]},
    )  # fmt: skip
    found = tenancy.violations(spec, [open_tier])
    assert len(found) == 2
    assert "system-cluster-critical" in found[0] and "tolerations[0] has no key" in found[1]
    listed = TenantTier.from_config_map(
        config_map("ops", allowedPriorityClasses="system-cluster-critical")
    )
    assert len(tenancy.violations(spec, [listed])) == 1, "listed by name: allowed"


# -- the lifecycle ---------------------------------------------------------------------------------
def test_violating_job_fails_before_any_pod() -> None:
    cluster = FakeCluster(job_manifest(image="registry.example/other/x:1"), fast_settings())
    obs = dataclasses.replace(cluster.observe(), tenant_tiers=(tier_a(),))
    plan = decide(obs, cluster.settings)
    cluster.apply(plan)
    assert plan.pods_to_create() == [] and cluster.pods == {}
    failed = cluster.condition("Failed")
    assert cluster.status["phase"] == "Failed" and failed is not None
    assert failed["reason"] == "ForbiddenByPolicy"
    assert "spec.image 'registry.example/other/x:1' is not allowed" in failed["message"]
    assert "tier 'team-a'" in failed["message"]


def test_allowed_job_proceeds() -> None:
    manifest = job_manifest(runPolicy={"gpuHourBudget": 50})
    cluster = FakeCluster(manifest, fast_settings())
    plan = decide(
        dataclasses.replace(cluster.observe(), tenant_tiers=(tier_a(),)), cluster.settings
    )
    cluster.apply(plan)
    assert cluster.status.get("phase") != "Failed"
    assert plan.actions, "validation (or the gang) starts"


# -- fetching ------------------------------------------------------------------------------------
class FakeApi:
    """GETs of the tier ConfigMaps and of namespaces, counted."""

    def __init__(self, config_maps: list[dict[str, Any]], labels: dict[str, dict[str, str]]):
        self.config_maps = config_maps
        self.labels = labels
        self.requests: list[str] = []

    async def get(self, path: str) -> dict[str, Any]:
        self.requests.append(path)
        if path.startswith("/api/v1/namespaces/kubetune-system/configmaps?"):
            assert path.endswith("labelSelector=kubetune.io/tenant-policy")
            return {"items": self.config_maps}
        name = path.rsplit("/", 1)[1]
        if name not in self.labels:
            raise ApiError(404, "NotFound", path)
        return {"metadata": {"name": name, "labels": self.labels[name]}}


def test_tenant_policies_fetch_match_and_cache() -> None:
    api = FakeApi([TEAM_A], {"team-a-ns": {"kubetune.io/tier": "team-a"}, "other": {}})
    now = [0.0]
    policies = TenantPolicies(api, "kubetune-system", ttl=10, clock=lambda: now[0])  # type: ignore[arg-type]

    async def run() -> None:
        await policies.refresh("team-a-ns")
        await policies.refresh("other")
        await policies.refresh("team-a-ns")  # cached
        assert [t.name for t in policies.for_namespace("team-a-ns")] == ["team-a"]
        assert policies.for_namespace("other") == ()
        assert len(api.requests) == 3
        api.config_maps = []  # the platform team removed the tier
        now[0] = 11
        await policies.refresh("team-a-ns")
        assert policies.for_namespace("team-a-ns") == ()
        await policies.refresh("gone")  # a namespace being deleted: no labels, no error

    asyncio.run(run())


def test_unreadable_policy_is_an_error_not_an_empty_policy() -> None:
    class Forbidden(FakeApi):
        async def get(self, path: str) -> dict[str, Any]:
            raise ApiError(403, "Forbidden", "configmaps is forbidden")

    policies = TenantPolicies(Forbidden([], {}), "kubetune-system")  # type: ignore[arg-type]
    with pytest.raises(ApiError):
        asyncio.run(policies.refresh("team-a-ns"))


def test_operator_may_list_the_tiers_only_in_its_own_namespace() -> None:
    from kubetune_operator.rbac import manifest_text, render_rbac

    for text in (manifest_text(), render_rbac(["team-a"])):
        docs = [d for d in yaml.safe_load_all(text) if d]
        (role,) = [
            d
            for d in docs
            if d["kind"] == "Role" and d["metadata"]["name"].endswith("-tenant-policies")
        ]
        assert role["metadata"]["namespace"] == "kubetune-system"
        assert role["rules"] == [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}
        ]
