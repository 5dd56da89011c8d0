"""Defaults by method, derived gradient accumulation and the config hash."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api import FineTuneJob
from kubetune.api.methods import METHOD_TRAITS
from kubetune.api.resolve import ResolutionError, ResolvedJob, resolve
from kubetune.api.validation import validate_manifest


def _job(doc: dict[str, Any]) -> FineTuneJob:
    report = validate_manifest(doc)
    assert report.job is not None, report.errors
    return report.job


def test_lora_defaults_filled(manifest: dict[str, Any]) -> None:
    resolved = resolve(_job(manifest))
    hp = resolved.spec.hyperparameters
    assert hp.learning_rate == METHOD_TRAITS["lora"].learning_rate == 2e-4
    assert hp.epochs == 3.0
    assert hp.weight_decay == 0.0
    assert resolved.spec.peft is not None and resolved.spec.peft.lora is not None
    assert resolved.spec.peft.lora.r == 16
    assert resolved.spec.dataset.eval_split == 0.05
    assert resolved.spec.dataset.packing is True
    # 64 samples / (4 per device x 8 GPUs) = 2 micro-batches per step
    assert resolved.derived.gradient_accumulation_steps == 2
    assert resolved.derived.world_size == 8


def test_full_fine_tuning_learning_rate_in_practice_range(manifest: dict[str, Any]) -> None:
    manifest["spec"]["method"] = "full"
    lr = resolve(_job(manifest)).spec.hyperparameters.learning_rate
    assert lr is not None and 1e-5 <= lr <= 5e-5


def test_dpo_defaults(manifest: dict[str, Any]) -> None:
    manifest["spec"]["method"] = "dpo"
    manifest["spec"]["dataset"]["format"] = "preference"
    resolved = resolve(_job(manifest))
    assert resolved.spec.dataset.packing is False
    assert resolved.spec.rlhf is not None and resolved.spec.rlhf.dpo is not None
    assert resolved.spec.hyperparameters.epochs == 1.0


def test_packing_defaults_by_method(manifest: dict[str, Any]) -> None:
    for method, packed in (("full", True), ("adapter", True), ("prefix", False), ("prompt", False)):
        manifest["spec"]["method"] = method
        assert resolve(_job(manifest)).spec.dataset.packing is packed, method


def test_deepspeed_defaults_to_zero2(manifest: dict[str, Any]) -> None:
    manifest["spec"]["distributed"] = {"strategy": "deepspeed"}
    assert resolve(_job(manifest)).spec.distributed.zero_stage == 2


def test_local_override_keeps_or_rounds_global_batch(manifest: dict[str, Any]) -> None:
    job = _job(manifest)
    local = resolve(job, nodes=1, nproc_per_node=2)
    assert local.derived.world_size == 2
    assert local.derived.gradient_accumulation_steps == 8  # 64 / (4 x 2)
    manifest["spec"]["hyperparameters"] = {"globalBatchSize": 96, "microBatchSize": 4}
    manifest["spec"]["resources"]["gpusPerNode"] = 8
    odd = resolve(_job(manifest), nodes=1, nproc_per_node=5)
    assert odd.derived.global_batch_size % 20 == 0


def test_unresolvable_batch_without_override_is_an_error(manifest: dict[str, Any]) -> None:
    job = _job(manifest)
    job.spec.hyperparameters.global_batch_size = 100
    with pytest.raises(ResolutionError, match="globalBatchSize 100"):
        resolve(job)


def test_resolved_document_round_trips_and_hash_ignores_attempt(
    manifest: dict[str, Any],
) -> None:
    job = _job(manifest)
    first = resolve(job, attempt=1)
    second = resolve(job, attempt=2)
    again = ResolvedJob.model_validate_json(first.model_dump_json(by_alias=True))
    assert again == first
    assert first.config_hash() == second.config_hash()
    job.spec.hyperparameters.seed = 7
    assert resolve(job).config_hash() != first.config_hash()


def test_resolve_does_not_mutate_the_job(manifest: dict[str, Any]) -> None:
    job = _job(manifest)
    resolve(job)
    assert job.spec.hyperparameters.learning_rate is None
    assert job.spec.peft is None


def test_recommended_range_warnings(manifest: dict[str, Any]) -> None:
    manifest["spec"]["method"] = "full"
    manifest["spec"]["hyperparameters"] = {"learningRate": 1e-3, "epochs": 10, "weightDecay": 0.3}
    report = validate_manifest(manifest)
    assert report.ok
    paths = {w.path for w in report.warnings}
    assert paths == {
        "spec.hyperparameters.learningRate",
        "spec.hyperparameters.epochs",
        "spec.hyperparameters.weightDecay",
    }
    assert all(w.severity == "warning" for w in report.warnings)
    assert "recommended range 1e-05..5e-05" in str(report.warnings[0])
