"""Pods the API server refuses to create: the job says so in a condition (with the server's
message) while a retry may help, and fails at once when it cannot (issue 9, item 12)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kubetune_operator.controller import Controller
from kubetune_operator.kube import ApiError, KubeClient
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.observed import CreateRefusal, Observed
from kubetune_operator.plan import CreatePod, Plan
from kubetune_operator.settings import OperatorSettings
from tests.unit.operator.test_runtime import FakeApi, with_api

MISSING_SA = (
    'pods "tune-validate-1" is forbidden: error looking up service account team/trainer: '
    'serviceaccount "trainer" not found'
)
PSS = (
    'pods "tune-validate-1" is forbidden: violates PodSecurity "restricted:latest": '
    'hostPath volumes (volume "x")'
)


def test_a_refusal_that_may_pass_is_a_condition_with_the_servers_words(
    make_cluster: Any,
) -> None:
    c = make_cluster()
    c.step()
    (pod,) = c.validation_pods()
    del c.pods[pod["metadata"]["name"]]  # it was never created: the server refused it
    c.refusal = CreateRefusal(pod["metadata"]["name"], 403, "Forbidden", MISSING_SA, 1)
    plan = c.step()
    cond = c.condition("PodCreationFailed")
    assert cond is not None and cond["status"] == "True"
    assert cond["reason"] == "FailedCreate"
    assert 'serviceaccount "trainer" not found' in cond["message"]
    assert c.status["phase"] == "Validating", "a ServiceAccount may still be created"
    assert c.status["progress"]["summary"] == "blocked: pod creation refused (Forbidden)"
    assert any(isinstance(a, CreatePod) for a in plan.actions), "keeps trying"
    # The ServiceAccount appears: the next create succeeds and the condition goes.
    c.refusal = None
    c.step()
    assert c.condition("PodCreationFailed") is None
    assert c.status["progress"]["summary"] == "validating"


@pytest.mark.parametrize(
    ("code", "reason", "message"),
    [
        (422, "Invalid", 'Pod "x" is invalid: spec.tolerations[0].operator: Invalid value'),
        (403, "Forbidden", PSS),
        (400, "BadRequest", 'admission webhook "policy.example.com" denied the request'),
    ],
)
def test_a_refusal_no_retry_can_change_fails_the_job(
    make_cluster: Any, code: int, reason: str, message: str
) -> None:
    c = make_cluster()
    c.step()
    name = c.validation_pods()[0]["metadata"]["name"]
    del c.pods[name]
    c.refusal = CreateRefusal(name, code, reason, message, 1)
    plan = c.step()
    assert c.status["phase"] == "Failed"
    failed = c.condition("Failed")
    assert failed is not None and failed["reason"] == "PodCreationRefused"
    assert message[:40] in failed["message"]
    assert not any(isinstance(a, CreatePod) for a in plan.actions)
    assert c.condition("PodCreationFailed") is None


def test_a_refusal_under_an_older_spec_is_not_held_against_the_new_one(
    make_cluster: Any,
) -> None:
    c = make_cluster()
    c.step()
    name = c.validation_pods()[0]["metadata"]["name"]
    c.refusal = CreateRefusal(name, 422, "Invalid", "bad", generation=0)
    c.step()
    assert c.status["phase"] == "Validating"
    assert c.condition("PodCreationFailed") is None


def test_the_executor_records_refusals_and_forgets_them_on_success() -> None:
    async def scenario(client: KubeClient, api: FakeApi) -> None:
        controller = Controller(
            client, OperatorSettings(leader_election=False, identity="t"), OperatorMetrics()
        )
        job = {"metadata": {"name": "j", "namespace": "ns", "uid": "u", "generation": 3}}
        plan = Plan(actions=[CreatePod({"metadata": {"name": "p"}})])
        api.fail[("POST", "/api/v1/namespaces/ns/pods")] = 422
        with pytest.raises(ApiError):
            await controller.execute(("ns", "j"), Observed(raw=job), plan)
        controller.cache.jobs = {("ns", "j"): [job]}
        observed = controller.observe(("ns", "j"))
        assert observed is not None and observed.refusal is not None
        assert (observed.refusal.pod, observed.refusal.code) == ("p", 422)
        assert observed.refusal.generation == 3 and observed.refusal.permanent
        del api.fail[("POST", "/api/v1/namespaces/ns/pods")]
        await controller.execute(("ns", "j"), Observed(raw=job), plan)
        observed = controller.observe(("ns", "j"))
        assert observed is not None and observed.refusal is None
        await controller.drain()

    asyncio.run(with_api(scenario))


def test_which_refusals_are_permanent() -> None:
    assert not CreateRefusal("p", 403, "Forbidden", MISSING_SA).permanent
    assert not CreateRefusal("p", 403, "Forbidden", "exceeded quota: gpu-quota").permanent
    assert CreateRefusal("p", 403, "Forbidden", PSS).permanent
    assert CreateRefusal("p", 422, "Invalid", "x").permanent
