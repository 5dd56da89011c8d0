"""spec.continual: what the API accepts, and the combinations it refuses early (types and
CRD CEL rules, the same verdict `kubetune validate` and the API server give)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from kubetune.api import cel
from kubetune.api.crd import custom_resource_definition
from kubetune.api.resolve import resolve
from kubetune.api.validation import validate_manifest

Spec = dict[str, Any]


def _continual() -> dict[str, Any]:
    return {
        "protectedTasks": [
            {"name": "task-a", "train": "pvc://data/a.jsonl", "format": "promptCompletion"}
        ],
        "replay": {"ratio": 0.25},
        "regularizer": {"type": "ewc", "strength": 100.0, "fisherSamples": 32},
    }


@pytest.fixture
def job(manifest: dict[str, Any]) -> dict[str, Any]:
    manifest["spec"]["continual"] = _continual()
    return manifest


def test_a_continual_job_validates_and_resolves(job: dict[str, Any]) -> None:
    report = validate_manifest(job)
    assert report.ok, [str(p) for p in report.errors]
    assert report.job is not None
    continual = resolve(report.job).spec.continual
    assert continual is not None and continual.regularizer is not None
    assert continual.regularizer.type == "ewc" and continual.replay is not None
    assert continual.replay.ratio == 0.25


@pytest.mark.parametrize("method", ["full", "lora", "prefix", "adapter"])
def test_measure_only_continual_is_fine_for_lm_methods(
    manifest: dict[str, Any], method: str
) -> None:
    manifest["spec"]["method"] = method
    manifest["spec"]["continual"] = {"protectedTasks": _continual()["protectedTasks"]}
    assert validate_manifest(manifest).ok


def _drop_type(s: Spec) -> None:
    s["continual"]["regularizer"].pop("type")


def _two_named_alike(s: Spec) -> None:
    tasks = s["continual"]["protectedTasks"]
    tasks.append(dict(tasks[0], train="pvc://data/b.jsonl"))


CASES: list[tuple[str, Callable[[Spec], None], str, str]] = [
    ("strength-without-type", _drop_type, "spec.continual.regularizer.type", "Required"),
    (
        "fisher-samples-with-l2sp",
        lambda s: s["continual"]["regularizer"].update(type="l2sp"),
        "spec.continual.regularizer.fisherSamples",
        "applies only to type ewc",
    ),
    (
        "zero-strength",
        lambda s: s["continual"]["regularizer"].update(strength=0),
        "spec.continual.regularizer.strength",
        "greater than 0",
    ),
    (
        "ratio-above-0.9",
        lambda s: s["continual"]["replay"].update(ratio=0.95),
        "spec.continual.replay.ratio",
        "less than or equal to 0.9",
    ),
    (
        "negative-ratio",
        lambda s: s["continual"]["replay"].update(ratio=-0.1),
        "spec.continual.replay.ratio",
        "greater than or equal to 0",
    ),
    (
        "no-protected-tasks",
        lambda s: s["continual"].update(protectedTasks=[]),
        "spec.continual.protectedTasks",
        "at least 1",
    ),
    (
        "duplicate-task-names",
        _two_named_alike,
        "spec.continual.protectedTasks",
        "names must be unique",
    ),
    (
        "preference-format",
        lambda s: s["continual"]["protectedTasks"][0].update(format="preference"),
        "spec.continual.protectedTasks[0].format",
        "'chat', 'promptCompletion' or 'text'",
    ),
    (
        "eval-and-eval-split",
        lambda s: s["continual"]["protectedTasks"][0].update(
            eval="pvc://data/a-eval.jsonl", evalSplit=0.1
        ),
        "spec.continual.protectedTasks[0].evalSplit",
        "not both",
    ),
    (
        "regularizer-with-fsdp",
        lambda s: s.update(distributed={"strategy": "fsdp"}),
        "spec.continual.regularizer",
        "needs distributed.strategy ddp",
    ),
    (
        "vision-dataset",
        lambda s: s["dataset"].update(format="visionChat"),
        "spec.continual",
        "continual needs a text dataset.format",
    ),
    *(
        (
            f"method-{method}",
            (
                lambda s, m=method, f=fmt: s.update(
                    method=m,
                    dataset=dict(s["dataset"], format=f),
                    rlhf={"reward": {"verifiable": {"type": "exactMatch"}}}
                    if m in ("ppo", "grpo", "rloo")
                    else None,
                    peft=None,
                )
            ),
            "spec.continual",
            "continual applies only to methods trained on language-modelling data",
        )
        for method, fmt in (
            ("reward", "preference"),
            ("dpo", "preference"),
            ("ppo", "promptOnly"),
            ("grpo", "promptOnly"),
            ("rloo", "promptOnly"),
        )
    ),
]


def _mutated(job: dict[str, Any], mutate: Callable[[Spec], None]) -> dict[str, Any]:
    doc = copy.deepcopy(job)
    mutate(doc["spec"])
    doc["spec"] = {k: v for k, v in doc["spec"].items() if v is not None}
    return doc


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_combination_is_refused_naming_the_field(
    job: dict[str, Any], mutate: Callable[[Spec], None], path: str, fragment: str
) -> None:
    report = validate_manifest(_mutated(job, mutate))
    assert not report.ok
    matching = [p for p in report.errors if p.path == path]
    assert any(fragment in p.message for p in matching), [str(p) for p in report.errors]


#: cross-field cases: the types cannot refuse them, the CRD's CEL rules must
CEL_CASES = [c for c in CASES if c[0].startswith("method-")] + [
    c
    for c in CASES
    if c[0]
    in (
        "fisher-samples-with-l2sp",
        "duplicate-task-names",
        "eval-and-eval-split",
        "regularizer-with-fsdp",
        "vision-dataset",
    )
]


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"), [c[1:] for c in CEL_CASES], ids=[c[0] for c in CEL_CASES]
)
def test_the_crd_itself_refuses_it(
    job: dict[str, Any], mutate: Callable[[Spec], None], path: str, fragment: str
) -> None:
    """The API server's verdict: the CRD's CEL rules on the defaulted object."""
    version = custom_resource_definition()["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    problems = cel.check(schema, cel.apply_defaults(schema, _mutated(job, mutate)))
    assert any(p.path == path and fragment in p.message for p in problems), [
        str(p) for p in problems
    ]


def test_continual_cannot_change_after_creation(job: dict[str, Any]) -> None:
    new = copy.deepcopy(job)
    new["spec"]["continual"]["replay"]["ratio"] = 0.5
    report = validate_manifest(new, old=job)
    assert [p.path for p in report.errors] == ["spec.continual"]
    added = copy.deepcopy(job)
    old = copy.deepcopy(job)
    old["spec"].pop("continual")
    assert [p.path for p in validate_manifest(added, old=old).errors] == ["spec.continual"]
