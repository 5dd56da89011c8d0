"""Each bad manifest is refused with a message that names the offending field."""

from __future__ import annotations

import copy

import pytest

from kubetune.api.validation import validate_manifest
from tests.fixtures.manifests import CASES, Mutation, minimal_manifest


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize(
    ("mutation", "path", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_invalid_manifest_is_refused_naming_the_field(
    mutation: Mutation, path: str, fragment: str
) -> None:
    doc = copy.deepcopy(minimal_manifest())
    mutation(doc)
    report = validate_manifest(doc)
    assert not report.ok
    messages = [str(p) for p in report.errors]
    matching = [p for p in report.errors if p.path == path]
    assert matching, f"no error at {path}; got {messages}"
    assert any(fragment in p.message for p in matching), messages


def test_every_problem_is_reported_not_just_the_first() -> None:
    doc = copy.deepcopy(minimal_manifest())
    doc["spec"]["hyperparameters"] = {"learningRate": 5, "warmupRatio": 0.9}
    doc["spec"]["resources"]["nodes"] = 0
    paths = {p.path for p in validate_manifest(doc).errors}
    assert {
        "spec.hyperparameters.learningRate",
        "spec.hyperparameters.warmupRatio",
        "spec.resources.nodes",
    } <= paths


def test_not_a_mapping() -> None:
    report = validate_manifest(["not", "a", "manifest"])
    assert not report.ok
    assert "mapping" in report.errors[0].message
