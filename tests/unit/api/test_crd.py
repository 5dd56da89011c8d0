"""The generated CRD: reproducible, structural, documented, and its rules compile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import yaml

from kubetune.api.crd import CRD_FILENAME, custom_resource_definition, render_crd_yaml

REPO = Path(__file__).resolve().parents[3]


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    nodes = [(path, schema)]
    for key, sub in schema.get("properties", {}).items():
        nodes += _walk(sub, f"{path}.{key}")
    if "items" in schema:
        nodes += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        nodes += _walk(schema["additionalProperties"], f"{path}{{}}")
    return nodes


def _schema() -> dict[str, Any]:
    crd = custom_resource_definition()
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_checked_in_crd_matches_generation() -> None:
    assert (REPO / "crds" / CRD_FILENAME).read_text() == render_crd_yaml()


def test_crd_yaml_round_trips() -> None:
    docs = [d for d in yaml.safe_load_all(render_crd_yaml()) if d]
    assert docs == [custom_resource_definition()]


def test_every_field_has_a_description() -> None:
    missing = [
        path
        for path, node in _walk(_schema())
        if path
        and not path.endswith("{}")
        and not (path.endswith("[]") and node["type"] != "object")
        and path != ".metadata"
        and not node.get("description")
    ]
    assert missing == []


def test_schema_is_structural() -> None:
    for path, node in _walk(_schema()):
        assert "$ref" not in node, path
        assert "anyOf" not in node and "oneOf" not in node, path
        assert "patternProperties" not in node, path
        assert "type" in node, f"{path} has no type"
        if node["type"] == "object" and path not in (".metadata",):
            assert "properties" in node or "additionalProperties" in node, path


def _under_cel_rules(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The nodes a CEL rule can reach: a rule-bearing node and everything below it, less the
    API server's own apiVersion, kind and metadata (typed and bounded by the server)."""
    return [
        (sub, node)
        for path, ruled in _walk(schema)
        if ruled.get("x-kubernetes-validations")
        for sub, node in _walk(ruled, path)
        if sub not in (".apiVersion", ".kind") and not sub.startswith(".metadata")
    ]


def test_lists_and_strings_under_cel_rules_are_bounded() -> None:
    """The API server refuses CRDs whose rules could cost too much: bound everything."""
    nodes = _under_cel_rules(_schema())
    kinds = {node["type"] for _, node in nodes}
    assert {"array", "string"} <= kinds, "the rules reach both lists and strings"
    for path, node in nodes:
        if node["type"] == "array":
            assert "maxItems" in node, path
        elif node["type"] == "string":
            bounded = "maxLength" in node or "enum" in node or node.get("format") == "date-time"
            assert bounded, f"{path}: unbounded string"
        elif node["type"] == "object" and isinstance(node.get("additionalProperties"), dict):
            assert "maxProperties" in node, f"{path}: unbounded map"


def test_every_cel_rule_compiles() -> None:
    env = celpy.Environment()
    rules = [
        rule for _, node in _walk(_schema()) for rule in node.get("x-kubernetes-validations", [])
    ]
    assert len(rules) > 20
    for rule in rules:
        env.compile(rule["rule"])
        assert rule["message"]
        if "messageExpression" in rule:
            env.compile(rule["messageExpression"])


def test_names_status_and_printer_columns() -> None:
    crd = custom_resource_definition()
    spec = crd["spec"]
    assert spec["names"]["shortNames"] == ["ftj"]
    assert "kubetune" in spec["names"]["categories"]
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Method", "Model", "Progress", "GPUs", "Age"]


def test_conditions_are_a_map_list_keyed_by_type() -> None:
    conditions = _schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_nested_objects_default_to_their_defaults_so_rules_can_rely_on_them() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    for name in ("hyperparameters", "resources", "distributed", "checkpoint", "runPolicy"):
        default = spec[name]["default"]
        assert isinstance(default, dict) and default, name
        for key, value in default.items():  # the default obeys the schema's own defaults
            assert spec[name]["properties"][key].get("default", value) == value, (name, key)
    assert spec["resources"]["properties"]["gpuResourceName"]["default"] == "nvidia.com/gpu"
