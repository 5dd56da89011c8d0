"""The GPU-hour parts of the API: status.gpuHours, spec.runPolicy.gpuHourBudget and the
columns `kubectl get ftj -o wide` shows."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.crd import custom_resource_definition
from kubetune.api.validation import validate_manifest


def _version() -> dict[str, Any]:
    return dict(custom_resource_definition()["spec"]["versions"][0])


def test_wide_output_shows_gpu_hours_goodput_and_budget() -> None:
    wide = {c["name"]: c for c in _version()["additionalPrinterColumns"] if c.get("priority") == 1}
    assert wide["GPU-Hours"]["jsonPath"] == ".status.gpuHours.allocated"
    assert wide["Goodput"]["jsonPath"] == ".status.gpuHours.goodput"
    assert wide["Budget"]["jsonPath"] == ".spec.runPolicy.gpuHourBudget"
    assert {wide[n]["type"] for n in ("GPU-Hours", "Goodput", "Budget")} == {"number"}


def test_status_schema_documents_the_sums() -> None:
    status = _version()["schema"]["openAPIV3Schema"]["properties"]["status"]
    gpu = status["properties"]["gpuHours"]
    props = gpu["properties"]
    assert props["goodput"]["minimum"] == 0 and props["goodput"]["maximum"] == 1
    assert props["observedTime"]["format"] == "date-time"
    assert all(p.get("description") for p in props.values())


@pytest.mark.parametrize("budget", [0, -1.5])
def test_budget_must_be_positive(manifest: dict[str, Any], budget: float) -> None:
    manifest["spec"].setdefault("runPolicy", {})["gpuHourBudget"] = budget
    report = validate_manifest(manifest)
    assert [p.path for p in report.errors] == ["spec.runPolicy.gpuHourBudget"]


def test_budget_is_optional_and_fractional(manifest: dict[str, Any]) -> None:
    manifest["spec"].setdefault("runPolicy", {})["gpuHourBudget"] = 0.25
    report = validate_manifest(manifest)
    assert not report.errors
    assert report.job is not None and report.job.spec.run_policy.gpu_hour_budget == 0.25
    schema = _version()["schema"]["openAPIV3Schema"]["properties"]["spec"]
    budget = schema["properties"]["runPolicy"]["properties"]["gpuHourBudget"]
    assert budget["exclusiveMinimum"] is True and budget["minimum"] == 0
    assert "GPUHourBudgetExhausted" in budget["description"]
