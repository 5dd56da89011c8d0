"""spec.dataPolicy: what the API accepts, its defaults, and what it refuses (types, CRD)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubetune.api.crd import custom_resource_definition
from kubetune.api.data_policy import PERSONAL_DATA_KINDS
from kubetune.api.resolve import resolve
from kubetune.api.validation import validate_manifest


def test_personal_data_policy_defaults_to_refuse_all_kinds(manifest: dict[str, Any]) -> None:
    manifest["spec"]["dataPolicy"] = {"personalData": {}}
    report = validate_manifest(manifest)
    assert report.ok, [str(p) for p in report.errors]
    assert report.job is not None
    policy = resolve(report.job).spec.data_policy
    assert policy is not None and policy.personal_data is not None
    assert policy.personal_data.action == "refuse" and policy.personal_data.kinds == []


def test_without_a_policy_nothing_is_scanned(manifest: dict[str, Any]) -> None:
    report = validate_manifest(manifest)
    assert report.ok and report.job is not None
    assert resolve(report.job).spec.data_policy is None


@pytest.mark.parametrize("action", ["refuse", "redact", "allow"])
def test_each_action_with_a_subset_of_kinds(manifest: dict[str, Any], action: str) -> None:
    manifest["spec"]["dataPolicy"] = {
        "personalData": {"action": action, "kinds": ["email", "creditCard"]}
    }
    report = validate_manifest(manifest)
    assert report.ok, [str(p) for p in report.errors]


@pytest.mark.parametrize(
    "personal",
    [{"action": "mask"}, {"kinds": ["ssn"]}, {"action": "redact", "values": True}],
    ids=["unknown-action", "unknown-kind", "unknown-field"],
)
def test_bad_policies_are_refused(manifest: dict[str, Any], personal: dict[str, Any]) -> None:
    manifest["spec"]["dataPolicy"] = {"personalData": personal}
    report = validate_manifest(manifest)
    assert not report.ok
    assert any(p.path.startswith("spec.dataPolicy") for p in report.errors), [
        str(p) for p in report.errors
    ]


def test_policy_cannot_change_after_creation(manifest: dict[str, Any]) -> None:
    old = copy.deepcopy(manifest)
    old["spec"]["dataPolicy"] = {"personalData": {"action": "redact"}}
    new = copy.deepcopy(old)
    new["spec"]["dataPolicy"]["personalData"]["action"] = "allow"
    report = validate_manifest(new, old=old)
    assert [p.path for p in report.errors] == ["spec.dataPolicy"]
    removed = copy.deepcopy(old)
    del removed["spec"]["dataPolicy"]
    assert [p.path for p in validate_manifest(removed, old=old).errors] == ["spec.dataPolicy"]
    assert validate_manifest(copy.deepcopy(old), old=old).ok


def test_crd_schema_describes_and_constrains_the_policy() -> None:
    crd = custom_resource_definition()
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    personal = spec["properties"]["dataPolicy"]["properties"]["personalData"]
    assert personal["description"]
    action = personal["properties"]["action"]
    assert action["enum"] == ["refuse", "redact", "allow"] and action["default"] == "refuse"
    kinds = personal["properties"]["kinds"]
    assert kinds["items"]["enum"] == list(PERSONAL_DATA_KINDS)
    assert kinds["x-kubernetes-list-type"] == "set"


def test_api_kinds_are_the_detector_kinds() -> None:
    privacy = pytest.importorskip("kubetune_trainer.privacy")
    assert set(PERSONAL_DATA_KINDS) == set(privacy.KINDS)
