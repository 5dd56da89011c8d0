"""The ModelRollout API: the generated CRD is structural and documented, its CEL rules
compile and refuse what they should, and the example manifests are valid."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from pydantic import ValidationError

from kubetune.api import cel
from kubetune.api.crd import render_crds, rollout_definition
from kubetune.api.rollout import ModelRollout
from tests.unit.api.test_crd import _under_cel_rules, _walk

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "rollout" / "support-bot.yaml"
FILENAME = "kubetune.io_modelrollouts.yaml"


def _schema() -> dict[str, Any]:
    return rollout_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _example() -> dict[str, Any]:
    return dict(yaml.safe_load(EXAMPLE.read_text()))


def _problems(doc: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Schema defaults applied, then every CEL rule, as the API server does."""
    schema = _schema()
    obj = cel.apply_defaults(schema, copy.deepcopy(doc))
    old_obj = cel.apply_defaults(schema, copy.deepcopy(old)) if old else None
    return [p.message for p in cel.check(schema, obj, old_obj)]


def test_checked_in_crds_match_generation() -> None:
    text = render_crds()[FILENAME]
    assert (REPO / "crds" / FILENAME).read_text() == text
    assert (REPO / "charts" / "kubetune" / "crds" / FILENAME).read_text() == text


def test_schema_is_structural_and_documented() -> None:
    for path, node in _walk(_schema()):
        assert "$ref" not in node and "anyOf" not in node, path
        assert "type" in node, path
        if path and path != ".metadata" and not path.endswith("[]"):
            assert node.get("description"), f"{path} has no description"


def test_everything_under_cel_rules_is_bounded() -> None:
    for path, node in _under_cel_rules(_schema()):
        if node["type"] == "array":
            assert "maxItems" in node, path
        elif node["type"] == "string":
            assert "maxLength" in node or "enum" in node or node.get("format"), path


def test_every_rule_compiles() -> None:
    env = celpy.Environment()
    rules = [r for _, node in _walk(_schema()) for r in node.get("x-kubernetes-validations", [])]
    assert len(rules) >= 10
    for rule in rules:
        env.compile(rule["rule"])


def test_names_and_printer_columns() -> None:
    spec = rollout_definition()["spec"]
    assert spec["names"]["kind"] == "ModelRollout"
    assert spec["names"]["shortNames"] == ["mro"]
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Step", "Weight", "Candidate", "Baseline", "Age"]


def test_example_is_valid() -> None:
    doc = _example()
    rollout = ModelRollout.model_validate(doc)
    assert rollout.spec.candidate.fine_tune_job == "support-bot-lora"
    assert _problems(doc) == []


def _with(mutate: Any) -> dict[str, Any]:
    doc = _example()
    mutate(doc["spec"])
    return doc


@pytest.mark.parametrize(
    ("case", "mutate", "message"),
    [
        (
            "two-kinds-in-a-step",
            lambda s: s["steps"].__setitem__(0, {"setWeight": 5, "pause": {}}),
            "exactly one of setWeight, pause or analysis",
        ),
        (
            "empty-step",
            lambda s: s["steps"].append({}),
            "exactly one of setWeight, pause or analysis",
        ),
        (
            "analysis-step-without-analysis",
            lambda s: s.pop("analysis"),
            "analysis steps need spec.analysis",
        ),
        (
            "same-backend",
            lambda s: s["candidate"]["backendRef"].update(name="support-bot-v1"),
            "different backends",
        ),
        (
            "same-model-name",
            lambda s: s["candidate"].update(modelName="support-bot-v1"),
            "different model names",
        ),
        (
            "duplicate-metric",
            lambda s: s["analysis"]["metrics"].append(copy.deepcopy(s["analysis"]["metrics"][0])),
            "metric names must be unique",
        ),
        (
            "query-and-sequential",
            lambda s: s["analysis"]["metrics"][2].update(query="up"),
            "either query (a threshold metric) or sequential",
        ),
        (
            "query-without-limit",
            lambda s: [s["analysis"]["metrics"][0].pop(k) for k in ("threshold", "baseline")],
            "needs threshold, baseline or both",
        ),
        (
            "threshold-on-sequential",
            lambda s: s["analysis"]["metrics"][2].update(threshold=0.5),
            "threshold and baseline apply only to query metrics",
        ),
        (
            "proportion-without-total",
            lambda s: s["analysis"]["metrics"][2]["sequential"].pop("totalQuery"),
            "type Proportion needs successQuery and totalQuery",
        ),
        (
            "empty-baseline-comparison",
            lambda s: s["analysis"]["metrics"][0].update(baseline={}),
            "maxRelativeDegradation, maxAbsoluteDegradation or both",
        ),
    ],
)
def test_bad_rollouts_are_refused_with_a_clear_message(
    case: str, mutate: Any, message: str
) -> None:
    problems = _problems(_with(mutate))
    assert any(message in p for p in problems), (case, problems)


def test_target_cannot_change() -> None:
    old = _example()
    new = _with(lambda s: s["target"].update(name="other-route"))
    assert any("target cannot change" in p for p in _problems(new, old))
    assert _problems(_example(), old) == []


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s["steps"].__setitem__(0, {"setWeight": 101}),
        lambda s: s["candidate"].pop("fineTuneJob"),
        lambda s: s["analysis"].update(intervalSeconds=1),
        lambda s: s["analysis"]["metrics"][2]["sequential"].update(alpha=0.7),
        lambda s: s["candidate"]["backendRef"].update(port=0),
        lambda s: s.update(unknownField=1),
        lambda s: s["analysis"]["metrics"][0].update(query="rate(x{m='${modle}'}[1m])"),
        lambda s: s["analysis"]["metrics"][2]["sequential"].update(totalQuery="sum(${window"),
    ],
)
def test_schema_bounds_are_enforced_by_the_models(mutate: Any) -> None:
    with pytest.raises(ValidationError):
        ModelRollout.model_validate(_with(mutate))


def test_unknown_placeholder_gets_a_readable_message() -> None:
    from kubetune.api.validation import validate_manifest

    report = validate_manifest(
        _with(lambda s: s["analysis"]["metrics"][0].update(query="up{m='${modle}'}"))
    )
    assert not report.ok
    text = " ".join(str(p) for p in report.errors)
    assert "analysis.metrics[0].query" in text.replace("analysis.metrics.0.query", text)
    assert "only placeholders are ${model}" in text
