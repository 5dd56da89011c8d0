"""spec.evaluation: good and bad manifests, both through `kubetune validate`'s pipeline
(pydantic + CEL) and through the CRD's own CEL rules as the API server runs them."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from kubetune.api import cel
from kubetune.api.crd import custom_resource_definition
from kubetune.api.validation import validate_manifest
from tests.fixtures.manifests import minimal_manifest

Edit = Callable[[dict[str, Any]], None]


def with_evaluation() -> dict[str, Any]:
    doc = minimal_manifest()
    doc["spec"]["evaluation"] = {
        "baseline": "pvc://models/previous-release",
        "sets": [
            {
                "name": "qa",
                "uri": "pvc://data/qa.jsonl",
                "metrics": [
                    {"type": "exactMatch"},
                    {"type": "regex", "pattern": r"^\d+$"},
                    {"type": "regex", "name": "polite", "pattern": "(?i)please"},
                    {"type": "rewardModel", "uri": "pvc://models/rm"},
                ],
            }
        ],
        "gates": [
            {"metric": "qa/exactMatch", "noWorseThanBaseline": {"tolerance": 0.02}},
            {"metric": "qa/polite", "atLeast": 0.5},
            {"metric": "heldOut/loss", "noWorseThanBaseline": {}, "atMost": 3.0},
        ],
    }
    return doc


def _crd_schema() -> dict[str, Any]:
    version = custom_resource_definition()["spec"]["versions"][0]
    return version["schema"]["openAPIV3Schema"]


def test_a_full_evaluation_spec_is_valid_and_defaulted() -> None:
    report = validate_manifest(with_evaluation())
    assert report.ok, [str(p) for p in report.errors]
    assert report.job is not None and report.job.spec.evaluation is not None
    ev = report.job.spec.evaluation
    assert (ev.confidence, ev.bootstrap_samples, ev.seed) == (0.95, 1000, 0)
    assert ev.sets[0].max_new_tokens == 64


def _gate(metric: str) -> Edit:
    return lambda e: e["gates"].append({"metric": metric, "atLeast": 0.1})


BAD: list[tuple[str, Edit, str, str]] = [
    ("undeclared-metric", _gate("qa/contains"), "spec.evaluation.gates", "declared metric"),
    ("undeclared-set", _gate("other/exactMatch"), "spec.evaluation.gates", "declared metric"),
    (
        "gate-without-rule",
        lambda e: e["gates"].append({"metric": "qa/exactMatch"}),
        "spec.evaluation.gates[3]",
        "at least one of",
    ),
    (
        "regex-without-pattern",
        lambda e: e["sets"][0]["metrics"].append({"type": "regex", "name": "x"}),
        "spec.evaluation.sets[0].metrics[4].pattern",
        "pattern is required",
    ),
    (
        "pattern-on-exact-match",
        lambda e: e["sets"][0]["metrics"].__setitem__(0, {"type": "exactMatch", "pattern": "a"}),
        "spec.evaluation.sets[0].metrics[0].pattern",
        "applies only to it",
    ),
    (
        "reward-without-uri",
        lambda e: e["sets"][0]["metrics"].append({"type": "rewardModel", "name": "rm2"}),
        "spec.evaluation.sets[0].metrics[4].uri",
        "uri is required",
    ),
    (
        "duplicate-metric-name",
        lambda e: e["sets"][0]["metrics"].append({"type": "exactMatch"}),
        "spec.evaluation.sets[0].metrics",
        "unique within a set",
    ),
    (
        "duplicate-set-name",
        lambda e: e["sets"].append(copy.deepcopy(e["sets"][0])),
        "spec.evaluation.sets",
        "set names must be unique",
    ),
]


@pytest.mark.parametrize(
    ("edit", "path", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_evaluation_is_refused_by_validate_and_by_the_crd(
    edit: Edit, path: str, fragment: str
) -> None:
    doc = with_evaluation()
    edit(doc["spec"]["evaluation"])
    report = validate_manifest(doc)
    assert any(p.path == path and fragment in p.message for p in report.errors), [
        str(p) for p in report.errors
    ]
    schema = _crd_schema()
    problems = cel.check(schema, cel.apply_defaults(schema, doc))
    assert any(p.path == path and fragment in p.message for p in problems), [
        str(p) for p in problems
    ]


def test_invalid_regex_is_refused_before_the_api_server() -> None:
    doc = with_evaluation()
    doc["spec"]["evaluation"]["sets"][0]["metrics"][1]["pattern"] = "(unclosed"
    errors = validate_manifest(doc).errors
    assert any(
        p.path == "spec.evaluation.sets[0].metrics[1].pattern"
        and "not a valid regular expression" in p.message
        for p in errors
    ), [str(p) for p in errors]


def test_held_out_gates_need_an_evaluation_split() -> None:
    doc = with_evaluation()
    doc["spec"]["dataset"]["evalSplit"] = 0.0
    errors = validate_manifest(doc).errors
    assert any(
        p.path == "spec.evaluation.gates" and "need an evaluation split" in p.message
        for p in errors
    ), [str(p) for p in errors]
    doc["spec"]["dataset"].pop("evalSplit")
    doc["spec"]["dataset"]["eval"] = "pvc://data/eval.jsonl"
    assert validate_manifest(doc).ok


def test_reward_jobs_cannot_generate() -> None:
    doc = with_evaluation()
    doc["spec"]["method"] = "reward"
    doc["spec"]["dataset"]["format"] = "preference"
    errors = validate_manifest(doc).errors
    assert any(
        p.path == "spec.evaluation.sets" and "generative model" in p.message for p in errors
    ), [str(p) for p in errors]


def test_bad_gate_metric_name_is_a_pattern_error() -> None:
    doc = with_evaluation()
    doc["spec"]["evaluation"]["gates"][0]["metric"] = "heldOut/accuracy"
    errors = validate_manifest(doc).errors
    assert any(p.path == "spec.evaluation.gates[0].metric" for p in errors)


def test_evaluation_is_immutable() -> None:
    schema = _crd_schema()
    old = cel.apply_defaults(schema, with_evaluation())
    new = copy.deepcopy(old)
    new["spec"]["evaluation"]["gates"][0]["noWorseThanBaseline"]["tolerance"] = 0.5
    problems = cel.check(schema, new, old)
    assert any(
        p.path == "spec.evaluation" and "cannot change after creation" in p.message
        for p in problems
    ), [str(p) for p in problems]
    removed = copy.deepcopy(old)
    del removed["spec"]["evaluation"]
    assert any(p.path == "spec.evaluation" for p in cel.check(schema, removed, old))
    assert not [p for p in cel.check(schema, old, old) if p.path == "spec.evaluation"]


def test_status_schema_has_descriptions_and_bounds() -> None:
    props = _crd_schema()["properties"]["status"]["properties"]["evaluation"]
    assert props["description"]
    for name, field in props["properties"].items():
        assert field.get("description"), name
    assert props["properties"]["metrics"]["maxItems"] >= 66
    assert set(props["properties"]["verdict"]["enum"]) == {"Passed", "Failed", "NotEvaluated"}
