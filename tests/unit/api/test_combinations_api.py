"""Method x strategy x batch-shape combinations: refused by the CRD's CEL, at validate time."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubetune.api import cel
from kubetune.api.crd import custom_resource_definition
from kubetune.api.validation import validate_manifest
from tests.fixtures.manifests import minimal_manifest

QLORA = {"quantization": {"bits": 4}}


def _job(**spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(minimal_manifest())
    doc["spec"].update(spec)
    return doc


def _qlora(distributed: dict[str, Any]) -> dict[str, Any]:
    return _job(method="qlora", peft=QLORA, distributed=distributed)


def _ppo(mini_batches: int, gpus: int, global_batch: int, micro: int) -> dict[str, Any]:
    return _job(
        method="ppo",
        dataset={"train": "pvc://data/p.jsonl", "format": "promptOnly"},
        rlhf={"reward": {"model": "pvc://m/rm"}, "ppo": {"miniBatches": mini_batches}},
        resources={"nodes": 1, "gpusPerNode": gpus},
        hyperparameters={"globalBatchSize": global_batch, "microBatchSize": micro},
    )


def _cel_problems(doc: dict[str, Any]) -> list[cel.Problem]:
    """The CRD's rules as the API server evaluates them (on the defaulted object)."""
    schema = custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return cel.check(schema, cel.apply_defaults(schema, doc))


REFUSED = [
    ("qlora-fsdp", _qlora({"strategy": "fsdp"}), "spec.distributed.strategy", "method qlora"),
    (
        "qlora-zero3",
        _qlora({"strategy": "deepspeed", "zeroStage": 3}),
        "spec.distributed.strategy",
        "zeroStage 1 or 2",
    ),
    (
        "ppo-minibatches-do-not-divide",
        _ppo(mini_batches=3, gpus=2, global_batch=16, micro=2),  # 4 per process
        "spec.rlhf.ppo.miniBatches",
        "must divide the micro-batches per process",
    ),
]
ACCEPTED = [
    ("qlora-ddp", _qlora({"strategy": "ddp"})),
    ("qlora-zero2-default", _qlora({"strategy": "deepspeed"})),
    ("qlora-zero1", _qlora({"strategy": "deepspeed", "zeroStage": 1})),
    ("lora-fsdp", _job(distributed={"strategy": "fsdp"})),
    ("full-zero3", _job(method="full", distributed={"strategy": "deepspeed", "zeroStage": 3})),
    ("ppo-minibatches-divide", _ppo(mini_batches=2, gpus=2, global_batch=16, micro=2)),
    ("ppo-default-minibatches", _ppo(mini_batches=1, gpus=8, global_batch=8, micro=1)),
]


@pytest.mark.parametrize(
    ("doc", "path", "fragment"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_refused_by_the_crd_cel_rules_and_by_validate(
    doc: dict[str, Any], path: str, fragment: str
) -> None:
    for problems in (_cel_problems(doc), validate_manifest(doc).errors):
        matching = [p for p in problems if p.path == path and fragment in p.message]
        assert matching, [str(p) for p in problems]


@pytest.mark.parametrize("doc", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_runnable_combinations_are_accepted(doc: dict[str, Any]) -> None:
    assert _cel_problems(doc) == []
    report = validate_manifest(doc)
    assert report.ok, [str(p) for p in report.errors]


def test_the_trainer_refuses_a_hand_written_qlora_fsdp_document() -> None:
    from kubetune.api.resolve import resolve
    from kubetune.api.validation import parse_manifest

    pytest.importorskip("torch")
    from kubetune_trainer.config import check_runnable
    from kubetune_trainer.errors import InvalidConfigError

    job = resolve(parse_manifest(_qlora({"strategy": "ddp"})))
    job.spec.distributed.strategy = "fsdp"  # as if written by hand, past the API server
    with pytest.raises(InvalidConfigError, match="method qlora keeps its 4-bit base"):
        check_runnable(job)
