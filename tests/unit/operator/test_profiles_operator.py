"""Team defaults in the operator: merged before validation, recorded, frozen, waited for."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from typing import Any

from kubetune.api.profiles import Profile, ProfileSet
from kubetune_operator.lifecycle import decide
from kubetune_operator.observed import Observed
from kubetune_operator.profiles import PROFILE_WAIT_SECONDS, resolve_job
from tests.unit.operator.conftest import T0, fast_settings, job_manifest


def short_job(**spec: Any) -> dict[str, Any]:
    """A job that leaves GPUs, image and queue to its team's profiles."""
    job = job_manifest(name="short", namespace="team-a")
    job["spec"] = {
        "method": "lora",
        "model": {"uri": "pvc://models/llama-8b"},
        "dataset": {"train": "pvc://data/train.jsonl", "format": "chat"},
        "output": {"uri": "pvc://ckpt/short"},
        **spec,
    }
    return job


def team_profiles(gpus: int = 8, image: str = "registry.example/trainer:1") -> ProfileSet:
    cluster = Profile.from_body(
        {
            "kind": "ClusterFineTuneProfile",
            "metadata": {"name": "gpu-team", "resourceVersion": "11"},
            "spec": {
                "namespaceSelector": {"matchLabels": {"pool": "h100"}},
                "defaults": {"image": image, "resources": {"gpusPerNode": gpus}},
                "methods": {"lora": {"hyperparameters": {"learningRate": 1e-4}}},
            },
        }
    )
    default = Profile.from_body(
        {
            "kind": "FineTuneProfile",
            "metadata": {"name": "default", "namespace": "team-a", "resourceVersion": "12"},
            "spec": {"defaults": {"runPolicy": {"queueName": "team-a"}}},
        }
    )
    return ProfileSet((cluster,), (default,), {"pool": "h100"})


def step(
    job: dict[str, Any], profiles: ProfileSet | None, seconds: float = 1, **settings: Any
) -> Any:
    raw, resolution = resolve_job(copy.deepcopy(job), profiles)
    obs = Observed(raw=raw, now=T0 + timedelta(seconds=seconds), profiles=resolution)
    plan = decide(obs, fast_settings(**{"allowed_images": ["registry.example/*"], **settings}))
    if plan.status is not None:
        job["status"] = plan.status
    return plan


def resolved_document(plan: Any) -> dict[str, Any]:
    cm = next(a.body for a in plan.actions if type(a).__name__ == "ApplyConfigMap")
    doc: dict[str, Any] = json.loads(next(iter(cm["data"].values())))
    return doc


def test_profiles_are_merged_validated_recorded_and_reach_the_trainer() -> None:
    job = short_job()
    plan = step(job, team_profiles())
    status = job["status"]
    assert status["phase"] == "Validating", status
    assert status["profiles"] == [
        {
            "kind": "ClusterFineTuneProfile",
            "name": "gpu-team",
            "section": "defaults",
            "resourceVersion": "11",
        },
        {
            "kind": "ClusterFineTuneProfile",
            "name": "gpu-team",
            "section": "methods.lora",
            "resourceVersion": "11",
        },
        {
            "kind": "FineTuneProfile",
            "name": "default",
            "section": "defaults",
            "resourceVersion": "12",
        },
    ]
    assert status["profileDefaults"]["resources"] == {"gpusPerNode": 8}
    spec = resolved_document(plan)["spec"]
    assert spec["image"] == "registry.example/trainer:1"
    assert spec["resources"]["gpusPerNode"] == 8
    assert spec["runPolicy"]["queueName"] == "team-a"
    assert spec["hyperparameters"]["learningRate"] == 1e-4


def test_frozen_profiles_ignore_later_edits() -> None:
    job = short_job()
    step(job, team_profiles(gpus=8))
    # The platform team edits the profile: the job keeps what it was resolved with.
    raw, resolution = resolve_job(copy.deepcopy(job), team_profiles(gpus=4, image="new:2"))
    assert resolution is not None and not resolution.fresh
    assert raw["spec"]["resources"]["gpusPerNode"] == 8
    assert raw["spec"]["image"] == "registry.example/trainer:1"
    # ... and its own spec still wins.
    job["spec"]["resources"] = {"gpusPerNode": 2}
    raw, _ = resolve_job(copy.deepcopy(job), None)
    assert raw["spec"]["resources"]["gpusPerNode"] == 2


def test_operator_policy_checks_the_merged_spec() -> None:
    job = short_job()
    step(job, team_profiles(image="elsewhere.example/miner:1"))
    assert job["status"]["phase"] == "Failed"
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "ForbiddenByPolicy" and "elsewhere.example" in failed["message"]


def test_no_profiles_is_recorded_too() -> None:
    job = short_job()
    step(job, ProfileSet())
    assert job["status"]["profiles"] == []
    assert "profileDefaults" not in job["status"]


def test_merged_spec_is_what_gets_validated() -> None:
    # 3 GPUs from the profile make the default global batch (64) indivisible.
    job = short_job()
    step(job, team_profiles(gpus=3))
    assert job["status"]["phase"] == "Failed"
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert "globalBatchSize" in failed["message"]


def test_missing_named_profile_waits_then_fails() -> None:
    job = short_job(profile="does-not-exist")
    plan = step(job, team_profiles(), seconds=5)
    assert job["status"]["phase"] == "Pending"
    validated = next(c for c in job["status"]["conditions"] if c["type"] == "Validated")
    assert (validated["status"], validated["reason"]) == ("Unknown", "ProfileNotFound")
    assert plan.requeue_after is not None and plan.requeue_after <= 5
    assert not plan.actions, "nothing is created for a job whose profile is missing"
    step(job, team_profiles(), seconds=PROFILE_WAIT_SECONDS + 1)
    assert job["status"]["phase"] == "Failed"
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "ProfileNotFound"
    assert "team-a/does-not-exist" in failed["message"]


def test_a_job_resolved_before_profiles_existed_does_not_pick_them_up() -> None:
    job = short_job(resources={"gpusPerNode": 1})
    job["status"] = {"phase": "Running", "observedGeneration": 1, "attempts": 1}
    raw, resolution = resolve_job(copy.deepcopy(job), team_profiles())
    assert resolution is not None and not resolution.fresh and not resolution.applied
    assert raw["spec"] == job["spec"]
