"""spec.moe: accepted where it means something, refused early and clearly elsewhere."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubetune.api.resolve import resolve
from kubetune.api.validation import validate_manifest


def _with(manifest: dict[str, Any], moe: dict[str, Any], **spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(manifest)
    doc["spec"]["moe"] = moe
    doc["spec"].update(spec)
    return doc


def _errors(doc: dict[str, Any], old: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    report = validate_manifest(doc, old)
    return [(p.path, p.message) for p in report.errors]


def test_moe_block_round_trips_into_the_resolved_job(manifest: dict[str, Any]) -> None:
    doc = _with(
        manifest,
        {"freezeRouter": True, "routerAuxLossCoef": 0.02},
        peft={"lora": {"targetModules": ["experts", "q_proj"]}},
    )
    report = validate_manifest(doc)
    assert report.ok, _errors(doc)
    assert report.job is not None
    spec = resolve(report.job).spec
    assert spec.moe is not None and spec.moe.freeze_router
    assert spec.moe.router_aux_loss_coef == 0.02 and spec.moe.train_experts == []
    assert spec.peft is not None and spec.peft.lora is not None
    assert spec.peft.lora.target_modules == ["experts", "q_proj"]


def test_expert_selection_with_full_weights_is_accepted(manifest: dict[str, Any]) -> None:
    doc = _with(manifest, {"trainExperts": [0, 5]}, method="full")
    assert _errors(doc) == []


@pytest.mark.parametrize(
    ("moe", "spec", "path", "fragment"),
    [
        ({}, {"method": "prompt"}, "spec.moe", "moe applies only to methods full, lora"),
        ({}, {"method": "adapter"}, "spec.moe", "moe applies only to methods"),
        ({}, {"method": "grpo"}, "spec.moe", "online RL runs its own loop"),
        ({"trainExperts": [1]}, {}, "spec.moe.trainExperts", "selects experts of the full"),
        (
            {"trainExperts": [1]},
            {
                "method": "dpo",
                "dataset": {"train": "pvc://d/t.jsonl", "format": "preference"},
                "peft": {"lora": {}},
            },
            "spec.moe.trainExperts",
            "without peft.lora",
        ),
        (
            {"trainExperts": [1]},
            {"method": "full", "distributed": {"strategy": "fsdp"}},
            "spec.moe.trainExperts",
            "needs distributed.strategy ddp",
        ),
        ({"trainExperts": [2, 2]}, {"method": "full"}, "spec.moe.trainExperts", "twice"),
        ({"trainExperts": [-1]}, {"method": "full"}, "spec.moe.trainExperts[0]", ""),
        ({"routerAuxLossCoef": -0.1}, {}, "spec.moe.routerAuxLossCoef", ""),
        ({"expertz": [1]}, {}, "spec.moe.expertz", ""),
    ],
    ids=[
        "prompt",
        "adapter",
        "online-rl",
        "select-with-lora",
        "select-with-lora-policy",
        "select-with-fsdp",
        "duplicate-expert",
        "negative-index",
        "negative-coef",
        "unknown-field",
    ],
)
def test_moe_misuse_is_refused_naming_the_field(
    manifest: dict[str, Any], moe: dict[str, Any], spec: dict[str, Any], path: str, fragment: str
) -> None:
    errors = _errors(_with(manifest, moe, **spec))
    matching = [message for where, message in errors if where == path]
    assert matching, errors
    assert any(fragment in message for message in matching), errors


def test_moe_cannot_change_after_creation(manifest: dict[str, Any]) -> None:
    old = _with(manifest, {"freezeRouter": True})
    new = _with(manifest, {"freezeRouter": False})
    assert any(path == "spec.moe" and "cannot change" in m for path, m in _errors(new, old))
    assert _errors(copy.deepcopy(old), old) == []
