"""Each bad manifest is refused with a message that names the offending field."""

from __future__ import annotations

import copy

import pytest
from pydantic import ValidationError

from kubetune.api import cel
from kubetune.api.crd import custom_resource_definition
from kubetune.api.validation import parse_manifest, validate_manifest
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


def _crd_schema() -> dict[str, object]:
    version = custom_resource_definition()["spec"]["versions"][0]
    return version["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


CEL_CASES = []
for _case in CASES:
    _doc = copy.deepcopy(minimal_manifest())
    _case[1](_doc)
    try:
        parse_manifest(_doc)
    except ValidationError:
        continue  # refused by the types; the CEL step is not what refuses it
    CEL_CASES.append(_case)


def test_the_cel_step_has_cases() -> None:
    assert len(CEL_CASES) >= 20


@pytest.mark.parametrize(
    ("mutation", "path", "fragment"), [c[1:] for c in CEL_CASES], ids=[c[0] for c in CEL_CASES]
)
def test_cross_field_manifest_is_refused_by_the_crd_cel_rules(
    mutation: Mutation, path: str, fragment: str
) -> None:
    """What the types accept must be refused by the CRD's own CEL rules, as the API server
    evaluates them on the defaulted object, with the same path and message."""
    doc = copy.deepcopy(minimal_manifest())
    mutation(doc)
    schema = _crd_schema()
    problems = cel.check(schema, cel.apply_defaults(schema, doc))
    matching = [p for p in problems if p.path == path]
    assert matching, f"no CEL error at {path}; got {[str(p) for p in problems]}"
    assert any(fragment in p.message for p in matching), [str(p) for p in problems]


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
