"""The approved-digest allow-list: parsing, rendering, the CLI that writes it, and the API
field (types and the CRD's CEL rule)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from kubetune.api import cel
from kubetune.api.crd import custom_resource_definition
from kubetune.api.validation import validate_manifest
from kubetune.cli.main import app
from kubetune.contract.digest import sha256_path
from kubetune.contract.provenance import (
    DEFAULT_KEY,
    AllowListError,
    ApprovedDigest,
    allow_list_configmap,
    parse_allow_list,
    render_allow_list,
)
from tests.fixtures.manifests import minimal_manifest

A = "a" * 64
B = "0123456789abcdef" * 4


def test_yaml_entries_with_names_and_notes() -> None:
    text = f"approved:\n  - sha256: {A}\n    name: train.jsonl\n    note: DATA-42\n  - {B}\n"
    found = parse_allow_list(text)
    assert found[A] == ApprovedDigest(A, "train.jsonl", "DATA-42")
    assert found[B] == ApprovedDigest(B)


def test_bare_list_json_and_prefixes() -> None:
    assert set(parse_allow_list(f'["sha256:{A.upper()}", "{B}"]')) == {A, B}


def test_sha256sum_output() -> None:
    found = parse_allow_list(f"# approved\n{A}  data/train.jsonl\n{B} *eval.jsonl\n")
    assert found[A].name == "data/train.jsonl" and found[B].name == "eval.jsonl"


def test_empty_list_approves_nothing() -> None:
    assert parse_allow_list("") == {} and parse_allow_list("approved: []\n") == {}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("approved:\n  - not-a-digest\n", "is not a sha256 digest"),
        ("approved:\n  - {name: x}\n", "object with a sha256 key"),
        ("approved: 3\n", "expected a list"),
        ("approved: [\n", "neither YAML nor sha256sum"),
    ],
)
def test_bad_lists_say_where(text: str, fragment: str) -> None:
    with pytest.raises(AllowListError, match=fragment) as info:
        parse_allow_list(text, "ConfigMap approved-data key approved.yaml")
    assert "ConfigMap approved-data" in str(info.value)


def test_rendered_list_round_trips() -> None:
    entries = [ApprovedDigest(B, "b", "n"), ApprovedDigest(A, "a")]
    cm = allow_list_configmap("approved-data", entries, namespace="ml-team")
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["namespace"] == "ml-team"
    assert parse_allow_list(cm["data"][DEFAULT_KEY]) == {e.sha256: e for e in entries}
    assert render_allow_list(entries).index(A) < render_allow_list(entries).index(B)


def test_cli_approve_writes_the_configmap(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "hello"}\n')
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "part-0.parquet").write_bytes(b"x")
    old = tmp_path / "old.yaml"
    old.write_text(f"approved:\n  - {{sha256: {A}, name: older}}\n")
    out = tmp_path / "cm.yaml"
    result = CliRunner().invoke(
        app,
        [
            "provenance", "approve", str(data), str(folder), "--configmap", "approved-data",
            "-n", "ml-team", "--note", "DATA-7", "--merge", str(old), "-o", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cm = yaml.safe_load(out.read_text())
    assert cm["metadata"] == {
        "name": "approved-data",
        "namespace": "ml-team",
        "labels": {"app.kubernetes.io/part-of": "kubetune", "kubetune.io/allow-list": "data"},
    }
    found = parse_allow_list(cm["data"][DEFAULT_KEY])
    assert found[sha256_path(data)] == ApprovedDigest(sha256_path(data), str(data), "DATA-7")
    assert sha256_path(folder) in found and found[A].name == "older"


def _with(provenance: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(minimal_manifest())
    doc["spec"]["dataset"]["provenance"] = provenance
    return doc


def test_api_accepts_a_required_allow_list() -> None:
    report = validate_manifest(
        _with({"requireApproved": True, "allowListRef": {"name": "approved-data"}})
    )
    assert report.ok, [str(p) for p in report.errors]


def test_requiring_without_a_list_is_refused_by_the_crd() -> None:
    doc = _with({"requireApproved": True})
    assert not validate_manifest(doc).ok
    schema = custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    problems = cel.check(schema, cel.apply_defaults(schema, doc))
    assert any("requireApproved needs allowListRef" in p.message for p in problems), problems


def test_bad_key_is_refused() -> None:
    doc = _with({"allowListRef": {"name": "approved-data", "key": "a/b"}})
    assert not validate_manifest(doc).ok
