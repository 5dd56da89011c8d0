"""Property-based checks of the validator (hypothesis)."""

from __future__ import annotations

import copy
import typing
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from kubetune.api.job import FineTuneJob
from kubetune.api.resolve import resolve
from kubetune.api.validation import validate_manifest
from tests.fixtures.manifests import minimal_manifest

# field path -> (lowest allowed, highest allowed, integer?)
EXCLUSIVE_LOW = {"spec.hyperparameters.maxGradNorm", "spec.hyperparameters.learningRate"}
NUMERIC_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "spec.hyperparameters.globalBatchSize": (1, 65536, True),
    "spec.hyperparameters.microBatchSize": (1, 1024, True),
    "spec.hyperparameters.warmupRatio": (0.0, 0.5, False),
    "spec.hyperparameters.maxGradNorm": (0.0, 1000.0, False),  # exclusive 0
    "spec.hyperparameters.learningRate": (0.0, 1.0, False),  # exclusive 0
    "spec.dataset.maxSeqLength": (16, 131072, True),
    "spec.resources.nodes": (1, 512, True),
    "spec.resources.gpusPerNode": (0, 16, True),
    "spec.checkpoint.keepLast": (1, 100, True),
    "spec.runPolicy.backoffLimit": (0, 100, True),
    "spec.peft.lora.r": (1, 1024, True),
    "spec.peft.lora.dropout": (0.0, 0.9, False),
}


def _put(doc: dict[str, Any], path: str, value: Any) -> None:
    node = doc
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


@st.composite
def out_of_bounds(draw: st.DrawFn) -> tuple[str, float]:
    path = draw(st.sampled_from(sorted(NUMERIC_BOUNDS)))
    low, high, integer = NUMERIC_BOUNDS[path]
    if integer:
        value: float = draw(
            st.one_of(
                st.integers(max_value=int(low) - 1, min_value=-(10**9)),
                st.integers(min_value=int(high) + 1, max_value=10**9),
            )
        )
    else:
        value = draw(
            st.one_of(
                st.floats(max_value=low, exclude_max=path not in EXCLUSIVE_LOW, min_value=-1e9),
                st.floats(min_value=high, exclude_min=True, max_value=1e9),
            )
        )
    return path, value


@settings(max_examples=150, deadline=None)
@given(out_of_bounds())
def test_out_of_bounds_values_are_refused_at_their_path(case: tuple[str, float]) -> None:
    path, value = case
    doc = copy.deepcopy(minimal_manifest())
    _put(doc, path, value)
    report = validate_manifest(doc)
    assert not report.ok
    assert path in {p.path for p in report.errors}


OBJECT_PATHS = [
    "spec",
    "spec.model",
    "spec.dataset",
    "spec.hyperparameters",
    "spec.resources",
    "spec.output",
    "spec.checkpoint",
    "spec.runPolicy",
    "spec.distributed",
    "spec.peft.lora",
]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The API models an annotation can hold (unwrapping Optional, Annotated, lists)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _declared_fields(path: str) -> set[str]:
    """The wire names the API declares on the object at ``path`` (from the models)."""
    models: list[type[BaseModel]] = [FineTuneJob]
    for key in path.split("."):
        models = [
            inner
            for model in models
            for name, info in model.model_fields.items()
            if (info.alias or name) == key
            for inner in _models_in(info.annotation)
        ]
    assert models, f"no API model at {path}"
    return {info.alias or name for model in models for name, info in model.model_fields.items()}


def test_declared_fields_walk_the_real_models() -> None:
    assert "learningRate" in _declared_fields("spec.hyperparameters")
    assert "targetModules" in _declared_fields("spec.peft.lora")


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(OBJECT_PATHS),
    st.from_regex(r"[a-z][a-zA-Z]{2,20}", fullmatch=True),
)
def test_unknown_fields_are_refused(parent: str, name: str) -> None:
    # Only names the API really declares at that object are skipped; every other name
    # must be refused at its own path (accepting or pruning it fails here).
    assume(name not in _declared_fields(parent))
    doc = copy.deepcopy(minimal_manifest())
    _put(doc, f"{parent}.{name}", "x")
    report = validate_manifest(doc)
    assert not report.ok, f"unknown field {parent}.{name} was accepted"
    assert any(
        p.path == f"{parent}.{name}" and "unknown field" in p.message for p in report.errors
    ), [str(p) for p in report.errors]


@settings(max_examples=150, deadline=None)
@given(
    method=st.sampled_from(["full", "lora", "prefix", "prompt", "adapter"]),
    nodes=st.integers(1, 8),
    gpus=st.integers(1, 8),
    micro=st.integers(1, 16),
    accumulation=st.integers(1, 16),
)
def test_divisible_batches_are_accepted_and_accumulation_is_derived(
    method: str, nodes: int, gpus: int, micro: int, accumulation: int
) -> None:
    doc = copy.deepcopy(minimal_manifest())
    doc["spec"]["method"] = method
    doc["spec"]["resources"] = {"nodes": nodes, "gpusPerNode": gpus}
    doc["spec"]["hyperparameters"] = {
        "microBatchSize": micro,
        "globalBatchSize": micro * nodes * gpus * accumulation,
    }
    report = validate_manifest(doc)
    assert report.ok, [str(p) for p in report.errors]
    assert report.job is not None
    assert resolve(report.job).derived.gradient_accumulation_steps == accumulation


@settings(max_examples=100, deadline=None)
@given(
    nodes=st.integers(1, 8),
    gpus=st.integers(1, 8),
    micro=st.integers(1, 16),
    global_batch=st.integers(1, 4096),
)
def test_indivisible_batches_are_refused(
    nodes: int, gpus: int, micro: int, global_batch: int
) -> None:
    per_step = nodes * gpus * micro
    if global_batch % per_step == 0 or global_batch < micro:
        return
    doc = copy.deepcopy(minimal_manifest())
    doc["spec"]["resources"] = {"nodes": nodes, "gpusPerNode": gpus}
    doc["spec"]["hyperparameters"] = {"microBatchSize": micro, "globalBatchSize": global_batch}
    report = validate_manifest(doc)
    assert not report.ok
    problem = next(p for p in report.errors if p.path == "spec.hyperparameters.globalBatchSize")
    assert "multiple of microBatchSize x nodes x gpusPerNode" in problem.message
