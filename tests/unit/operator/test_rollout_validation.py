"""ModelRollout manifests through the shared validation path (api/validation.py): the
pydantic types and bounds and the CRD's CEL rules, as the API server applies them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubetune.api.validation import validate_manifest
from tests.unit.operator.rollout_world import rollout_doc

GOOD = rollout_doc([{"setWeight": 10}, {"analysis": {}}, {"pause": {"durationSeconds": 60}}])


def test_a_good_rollout_passes() -> None:
    report = validate_manifest(GOOD)
    assert report.ok, report.errors
    assert report.job is None  # not a FineTuneJob


def _with(path: list[Any], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        (_with(["spec", "steps", 0], {"setWeight": 10, "pause": {}}), "exactly one of"),
        (_with(["spec", "steps", 0, "setWeight"], 101), "spec.steps[0].setWeight"),
        (_with(["spec", "analysis"], None), "analysis steps need spec.analysis"),
        (_with(["spec", "candidate", "backendRef", "name"], "base"), "different backends"),
        (_with(["spec", "steps", 0, "setWeight"], "10"), "spec.steps[0].setWeight"),
        (_with(["spec", "candidate", "model_name"], "x"), "model_name"),
    ],
)
def test_bad_rollouts_are_refused_with_the_api_servers_reason(
    doc: dict[str, Any], problem: str
) -> None:
    report = validate_manifest(doc)
    assert not report.ok
    assert any(problem in str(p) for p in report.errors), report.errors


def test_the_target_cannot_change_on_update() -> None:
    new = _with(["spec", "target", "name"], "other-route")
    report = validate_manifest(new, old=GOOD)
    assert any("target cannot change" in str(p) for p in report.errors), report.errors
