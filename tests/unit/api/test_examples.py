"""Every shipped example manifest validates, and resolves to a runnable document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetune.api.resolve import resolve
from kubetune.api.validation import load_documents, validate_manifest

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = [
    (name, doc)
    for name, doc in load_documents(REPO / "examples")
    if isinstance(doc, dict) and doc.get("kind") == "FineTuneJob"
]


def test_the_required_examples_exist() -> None:
    methods = {doc["spec"]["method"] for _, doc in EXAMPLES}
    assert {"lora", "full", "dpo", "prompt"} <= methods
    zero3 = [d for _, d in EXAMPLES if d["spec"].get("distributed", {}).get("zeroStage") == 3]
    assert zero3 and zero3[0]["spec"]["resources"]["nodes"] == 2


@pytest.mark.parametrize(("name", "doc"), EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_example_validates_and_resolves(name: str, doc: dict[str, Any]) -> None:
    report = validate_manifest(doc)
    assert report.ok, [str(p) for p in report.errors]
    assert report.job is not None
    resolved = resolve(report.job)
    assert resolved.derived.world_size >= 1
    assert resolved.spec.hyperparameters.learning_rate is not None
