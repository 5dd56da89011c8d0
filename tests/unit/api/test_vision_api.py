"""spec.vision and the visionChat format: defaults, resolution and the CEL refusals."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubetune.api import FineTuneJob
from kubetune.api.resolve import resolve
from kubetune.api.validation import validate_manifest
from tests.fixtures.manifests import minimal_manifest


def _vision_job(**spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(minimal_manifest())
    doc["spec"]["dataset"]["format"] = "visionChat"
    doc["spec"].update(spec)
    return doc


def _errors(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in validate_manifest(doc).errors]


def test_vision_job_validates_and_resolves_without_packing() -> None:
    doc = _vision_job(vision={"trainVisionTower": True, "maxImagesPerSample": 2})
    assert _errors(doc) == []
    resolved = resolve(FineTuneJob.model_validate(doc))
    assert resolved.spec.dataset.packing is False  # the resolver never packs images
    assert resolved.spec.vision is not None
    assert resolved.spec.vision.train_vision_tower is True
    assert resolved.spec.vision.train_projector is True
    assert resolved.spec.vision.max_images_per_sample == 2


def test_full_fine_tuning_takes_vision_chat() -> None:
    assert _errors(_vision_job(method="full")) == []


def test_packing_is_refused_for_images() -> None:
    doc = _vision_job()
    doc["spec"]["dataset"]["packing"] = True
    errors = _errors(doc)
    assert any(
        path == "spec.dataset.packing" and "not available for the visionChat format" in message
        for path, message in errors
    ), errors


def test_vision_block_needs_the_image_format() -> None:
    doc = copy.deepcopy(minimal_manifest())
    doc["spec"]["vision"] = {"trainVisionTower": True}
    errors = _errors(doc)
    assert any(
        path == "spec.vision" and "only to dataset.format visionChat" in message
        for path, message in errors
    ), errors


@pytest.mark.parametrize("method", ["qlora", "prefix", "dpo", "reward"])
def test_other_methods_refuse_vision_chat(method: str) -> None:
    doc = _vision_job(method=method)
    errors = _errors(doc)
    assert any(path == "spec.dataset.format" for path, _ in errors), errors


@pytest.mark.parametrize("images", [0, 65])
def test_max_images_is_bounded(images: int) -> None:
    errors = _errors(_vision_job(vision={"maxImagesPerSample": images}))
    assert any("maxImagesPerSample" in path for path, _ in errors), errors
