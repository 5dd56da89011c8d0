"""The method-traits table is the one owner: the CRD, the trainer and the docs agree with it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import pytest
import yaml

from kubetune.api.crd import CRD_FILENAME
from kubetune.api.methods import METHOD_TRAITS, METHODS, Method, methods_where

REPO = Path(__file__).resolve().parents[3]
SUPPORTED = set(methods_where(lambda t: t.supported))


def _spec_schema() -> dict:
    crd = yaml.safe_load((REPO / "crds" / CRD_FILENAME).read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["spec"]


def test_table_covers_the_api_literal_in_order() -> None:
    assert tuple(METHOD_TRAITS) == get_args(Method) == METHODS


def test_crd_method_enum_and_rules_follow_the_table() -> None:
    spec = _spec_schema()
    assert tuple(spec["properties"]["method"]["enum"]) == tuple(METHOD_TRAITS)
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    for method, traits in METHOD_TRAITS.items():
        assert (f"self.method != '{method}'" in rules) is not traits.supported, method
    packing = next(r for r in rules if "self.dataset.packing" in r)
    assert packing.endswith(str(list(methods_where(lambda t: t.packs))).replace('"', "'"))


def test_trainer_registry_runs_exactly_the_supported_methods() -> None:
    pytest.importorskip("torch")
    from kubetune_trainer.methods.base import Method as MethodImpl
    from kubetune_trainer.methods.registry import METHODS as REGISTRY

    assert set(REGISTRY) == SUPPORTED
    for name, cls in REGISTRY.items():
        assert cls.name in METHOD_TRAITS, name  # the implementations name their own row
        # a reference model is prepared before the first step by the method's own hook
        assert (cls.prepare is not MethodImpl.prepare) is METHOD_TRAITS[name].needs_reference


def _names(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text)) & set(METHOD_TRAITS)


def test_docs_list_the_supported_methods() -> None:
    intro = set(re.findall(r"[a-z]+", (REPO / "README.md").read_text().split("\n\n")[1].lower()))
    for method, traits in METHOD_TRAITS.items():  # "LoRA/QLoRA, prefix and prompt tuning"
        assert (traits.title.split()[0].lower() in intro) is traits.supported, method

    trainer_doc = (REPO / "trainer" / "kubetune_trainer" / "README.md").read_text()
    outputs = trainer_doc.split("## Output directory", 1)[1].split("```")[1].splitlines()
    by_file = {
        "peft-adapter": next(line for line in outputs if "adapter_config.json" in line),
        "bottleneck-adapter": next(line for line in outputs if "kubetune_adapter.json" in line),
    }
    whole = next(line for line in outputs if line.startswith("model.safetensors"))
    for method in SUPPORTED:
        saved_as = METHOD_TRAITS[method].saved_as
        line = by_file.get(saved_as, whole)
        assert method in _names(line.split("  ", 1)[1]), (method, line)
    merged = next(line for line in outputs if line.startswith("merged/"))
    assert _names(merged) == set(methods_where(lambda t: t.mergeable))
