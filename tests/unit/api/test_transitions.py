"""Transition rules: what may change on an existing FineTuneJob."""

from __future__ import annotations

import copy
from typing import Any

from kubetune.api.validation import validate_manifest


def test_unchanged_update_is_accepted(manifest: dict[str, Any]) -> None:
    assert validate_manifest(copy.deepcopy(manifest), old=manifest).ok


def test_method_cannot_change(manifest: dict[str, Any]) -> None:
    new = copy.deepcopy(manifest)
    new["spec"]["method"] = "full"
    report = validate_manifest(new, old=manifest)
    assert any(p.path == "spec.method" and "cannot change" in p.message for p in report.errors)


def test_dataset_cannot_change(manifest: dict[str, Any]) -> None:
    new = copy.deepcopy(manifest)
    new["spec"]["dataset"]["train"] = "pvc://data/other.jsonl"
    report = validate_manifest(new, old=manifest)
    assert [p.path for p in report.errors] == ["spec.dataset"]


def test_resources_change_only_while_suspended(manifest: dict[str, Any]) -> None:
    new = copy.deepcopy(manifest)
    new["spec"]["resources"]["gpusPerNode"] = 4
    refused = validate_manifest(new, old=manifest)
    assert any("only while the job is suspended" in p.message for p in refused.errors)
    suspended = copy.deepcopy(manifest)
    suspended["spec"]["runPolicy"] = {"suspend": True}
    new["spec"]["runPolicy"] = {"suspend": True}
    assert validate_manifest(new, old=suspended).ok


def test_suspend_itself_may_toggle(manifest: dict[str, Any]) -> None:
    new = copy.deepcopy(manifest)
    new["spec"]["runPolicy"] = {"suspend": True}
    assert validate_manifest(new, old=manifest).ok
