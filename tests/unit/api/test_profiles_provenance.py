"""A profile that requires approved data (dataset.provenance.requireApproved) is enforced:
the job's own dataset.provenance cannot lower it or point at another allow-list; a
profile that does not require it is an ordinary default the job may override."""

from __future__ import annotations

from typing import Any

from kubetune.api.profiles import Profile, ProfileSet, apply_profiles, select_layers
from kubetune.api.validation import validate_manifest
from tests.fixtures.manifests import minimal_manifest

REQUIRED = {"requireApproved": True, "allowListRef": {"name": "approved-data"}}


def _team(provenance: dict[str, Any]) -> ProfileSet:
    body = {
        "kind": "FineTuneProfile",
        "metadata": {"name": "default", "namespace": "team-a"},
        "spec": {"defaults": {"dataset": {"provenance": provenance}}},
    }
    return ProfileSet((), (Profile.from_body(body),))


def _job(provenance: dict[str, Any] | None) -> dict[str, Any]:
    job = minimal_manifest()
    if provenance is not None:
        job["spec"]["dataset"]["provenance"] = provenance
    return job


def test_profile_sets_it_for_jobs_that_say_nothing() -> None:
    job = _job(None)
    merged, sources = apply_profiles(job, select_layers("team-a", "lora", None, _team(REQUIRED)))
    assert merged["spec"]["dataset"]["provenance"] == REQUIRED
    assert merged["spec"]["dataset"]["train"] == job["spec"]["dataset"]["train"]
    assert sources["dataset.provenance.requireApproved"] == "FineTuneProfile/default"
    assert validate_manifest(merged).ok


def test_a_job_cannot_lower_a_required_profile() -> None:
    own = {"requireApproved": False, "allowListRef": {"name": "my-own-list"}}
    layers = select_layers("team-a", "lora", None, _team(REQUIRED))
    merged, sources = apply_profiles(_job(own), layers)
    assert merged["spec"]["dataset"]["provenance"] == REQUIRED
    assert sources["dataset.provenance.allowListRef.name"] == "FineTuneProfile/default"
    assert not any(
        k.startswith("dataset.provenance") and v == "FineTuneJob" for k, v in sources.items()
    )


def test_a_recording_only_profile_is_an_ordinary_default() -> None:
    recording = {"allowListRef": {"name": "approved-data"}}
    own = {"requireApproved": True, "allowListRef": {"name": "stricter"}}
    layers = select_layers("team-a", "lora", None, _team(recording))
    merged, _ = apply_profiles(_job(own), layers)
    assert merged["spec"]["dataset"]["provenance"] == own
