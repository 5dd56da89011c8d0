"""spec.differentialPrivacy: what the API accepts, and the combinations it refuses early
(types and CRD CEL rules, the same verdict `kubetune validate` and the API server give)."""

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


@pytest.fixture
def job(manifest: dict[str, Any]) -> dict[str, Any]:
    manifest["spec"]["method"] = "lora"
    manifest["spec"]["resources"] = {"nodes": 1, "gpusPerNode": 1}
    manifest["spec"]["hyperparameters"] = {"globalBatchSize": 16, "microBatchSize": 4}
    manifest["spec"]["differentialPrivacy"] = {"targetEpsilon": 8.0, "maxGradNorm": 0.5}
    return manifest


def test_a_dp_job_validates_and_resolves(job: dict[str, Any]) -> None:
    report = validate_manifest(job)
    assert report.ok, [str(p) for p in report.errors]
    assert report.job is not None
    dp = resolve(report.job).spec.differential_privacy
    assert dp is not None and dp.target_epsilon == 8.0 and dp.max_grad_norm == 0.5
    assert dp.delta is None and dp.noise_multiplier is None and dp.accountant == "rdp"


def test_full_fine_tuning_with_an_explicit_noise_multiplier_is_fine(job: dict[str, Any]) -> None:
    job["spec"]["method"] = "full"
    job["spec"]["differentialPrivacy"].update(noiseMultiplier=1.1, delta=1e-6, accountant="prv")
    assert validate_manifest(job).ok


def _method(method: str, fmt: str = "chat", **extra: Any) -> Callable[[Spec], None]:
    def mutate(s: Spec) -> None:
        s.update(method=method, dataset=dict(s["dataset"], format=fmt), **extra)
        s.pop("peft", None)

    return mutate


CASES: list[tuple[str, Callable[[Spec], None], str, str]] = [
    (
        "zero-epsilon",
        lambda s: s["differentialPrivacy"].update(targetEpsilon=0),
        "spec.differentialPrivacy.targetEpsilon",
        "greater than 0",
    ),
    (
        "no-target",
        lambda s: s["differentialPrivacy"].pop("targetEpsilon"),
        "spec.differentialPrivacy.targetEpsilon",
        "Required",
    ),
    (
        "large-delta",
        lambda s: s["differentialPrivacy"].update(delta=0.1),
        "spec.differentialPrivacy.delta",
        "less than or equal to 0.01",
    ),
    (
        "negative-clip",
        lambda s: s["differentialPrivacy"].update(maxGradNorm=-1),
        "spec.differentialPrivacy.maxGradNorm",
        "greater than 0",
    ),
    (
        "unknown-accountant",
        lambda s: s["differentialPrivacy"].update(accountant="gdp"),
        "spec.differentialPrivacy.accountant",
        "'rdp' or 'prv'",
    ),
    ("method-qlora", _method("qlora"), "spec.differentialPrivacy", "only to methods full and lora"),
    (
        "method-prefix",
        _method("prefix"),
        "spec.differentialPrivacy",
        "only to methods full and lora",
    ),
    (
        "method-dpo",
        _method("dpo", "preference"),
        "spec.differentialPrivacy",
        "only to methods full and lora",
    ),
    (
        "method-grpo",
        _method("grpo", "promptOnly", rlhf={"reward": {"verifiable": {"type": "exactMatch"}}}),
        "spec.differentialPrivacy",
        "only to methods full and lora",
    ),
    (
        "packing",
        lambda s: s["dataset"].update(packing=True),
        "spec.dataset.packing",
        "one training row per sequence",
    ),
    (
        "fsdp",
        lambda s: s.update(distributed={"strategy": "fsdp"}),
        "spec.distributed.strategy",
        "needs distributed.strategy ddp",
    ),
    (
        "deepspeed",
        lambda s: s.update(distributed={"strategy": "deepspeed"}),
        "spec.distributed.strategy",
        "needs distributed.strategy ddp",
    ),
    (
        "two-gpus",
        lambda s: s.update(resources={"nodes": 1, "gpusPerNode": 2}),
        "spec.resources.gpusPerNode",
        "runs on one GPU",
    ),
    (
        "two-nodes",
        lambda s: s.update(resources={"nodes": 2, "gpusPerNode": 1}),
        "spec.resources.gpusPerNode",
        "runs on one GPU",
    ),
    (
        "fp16",
        lambda s: s["hyperparameters"].update(precision="fp16"),
        "spec.hyperparameters.precision",
        "does not support precision fp16",
    ),
    (
        "continual",
        lambda s: s.update(
            continual={
                "protectedTasks": [
                    {"name": "a", "train": "pvc://data/a.jsonl", "format": "promptCompletion"}
                ]
            }
        ),
        "spec.continual",
        "differentialPrivacy and continual cannot be combined",
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
CEL_CASES = [
    c
    for c in CASES
    if c[0].startswith("method-")
    or c[0] in ("packing", "fsdp", "deepspeed", "two-gpus", "two-nodes", "fp16", "continual")
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


def test_differential_privacy_cannot_change_after_creation(job: dict[str, Any]) -> None:
    new = copy.deepcopy(job)
    new["spec"]["differentialPrivacy"]["targetEpsilon"] = 50.0
    report = validate_manifest(new, old=job)
    assert [p.path for p in report.errors] == ["spec.differentialPrivacy"]
    old = copy.deepcopy(job)
    old["spec"].pop("differentialPrivacy")
    assert [p.path for p in validate_manifest(job, old=old).errors] == ["spec.differentialPrivacy"]


@pytest.mark.parametrize(("sent", "shown"), [(1.25, 1.25), (float("nan"), None), (-1.0, 0.0)])
def test_status_progress_mirrors_the_epsilon_spent(sent: float, shown: float | None) -> None:
    from datetime import UTC, datetime

    from kubetune_operator.observed import ProgressSample
    from kubetune_operator.progress import map_progress

    document = {"state": "training", "step": 3, "totalSteps": 10, "dpEpsilon": sent}
    progress, _ = map_progress(ProgressSample(document, datetime.now(UTC), 1), None, None)
    assert progress is not None and progress.dp_epsilon == shown
