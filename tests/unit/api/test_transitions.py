"""Transition rules: what may change on an existing FineTuneJob."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

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


def _refusal_paths(new: dict[str, Any], old: dict[str, Any]) -> list[str]:
    report = validate_manifest(new, old=old)
    return [p.path for p in report.errors if "cannot change after creation" in p.message]


@pytest.mark.parametrize(
    ("field", "mutate"),
    [
        ("output", lambda s: s["output"].update(uri="pvc://out/elsewhere")),
        ("output", lambda s: s["output"].update(credentialsSecretRef={"name": "store"})),
        ("model", lambda s: s["model"].update(uri="pvc://models/other")),
        ("model", lambda s: s["model"].update(trustRemoteCode=True)),
        ("model", lambda s: s["model"].update(dtype="bfloat16")),
        ("hyperparameters", lambda s: s.update(hyperparameters={"learningRate": 1e-4})),
        ("hyperparameters", lambda s: s.update(hyperparameters={"seed": 7})),
        ("peft", lambda s: s.update(peft={"lora": {"r": 8}})),
    ],
    ids=[
        "output-uri",
        "output-credentials",
        "model-uri",
        "model-trust-remote-code",
        "model-dtype",
        "hyperparameters-learning-rate",
        "hyperparameters-seed",
        "peft-added",
    ],
)
def test_immutable_block_cannot_change(
    manifest: dict[str, Any], field: str, mutate: Callable[[dict[str, Any]], None]
) -> None:
    new = copy.deepcopy(manifest)
    mutate(new["spec"])
    assert _refusal_paths(new, manifest) == [f"spec.{field}"]
    # The same change is fine on create: only the transition rule refuses it.
    assert validate_manifest(new).ok


def test_peft_cannot_change_or_be_removed(manifest: dict[str, Any]) -> None:
    old = copy.deepcopy(manifest)
    old["spec"]["peft"] = {"lora": {"r": 8, "alpha": 16}}
    changed = copy.deepcopy(old)
    changed["spec"]["peft"]["lora"]["r"] = 16
    assert _refusal_paths(changed, old) == ["spec.peft"]
    removed = copy.deepcopy(old)
    del removed["spec"]["peft"]
    assert _refusal_paths(removed, old) == ["spec.peft"]
    assert validate_manifest(copy.deepcopy(old), old=old).ok


def test_defaulted_values_written_out_are_not_a_change(manifest: dict[str, Any]) -> None:
    """Spelling out a default (as the server stores it) changes nothing."""
    new = copy.deepcopy(manifest)
    new["spec"]["hyperparameters"] = {"globalBatchSize": 64, "seed": 42}
    new["spec"]["output"]["mergeAdapter"] = False
    new["spec"]["model"]["dtype"] = "auto"
    assert validate_manifest(new, old=manifest).ok


def test_mutable_fields_may_change(manifest: dict[str, Any]) -> None:
    new = copy.deepcopy(manifest)
    new["spec"]["env"] = [{"name": "MODE", "value": "x"}]
    new["spec"]["runPolicy"] = {"backoffLimit": 5, "stallTimeoutSeconds": 600}
    new["spec"]["checkpoint"] = {"keepLast": 3}
    assert validate_manifest(new, old=manifest).ok
