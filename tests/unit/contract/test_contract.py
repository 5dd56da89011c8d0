"""The operator–trainer contract: exit-code classes and the progress document."""

from __future__ import annotations

import pytest

from kubetune.contract import ExitCode, ProgressDocument, classify_exit_code
from kubetune.contract.exit_codes import exit_reason


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0, "success"),
        (ExitCode.RETRYABLE, "retryable"),
        (137, "retryable"),  # SIGKILL: OOM killer or eviction
        (143, "retryable"),  # SIGTERM: node drain
        (1, "retryable"),  # an unattributed crash: bounded by backoffLimit
        (ExitCode.INVALID_DATA, "permanent"),
        (ExitCode.INVALID_CONFIG, "permanent"),
        (ExitCode.MODEL_UNAVAILABLE, "permanent"),
        (ExitCode.NUMERICAL_DIVERGENCE, "permanent"),
        (ExitCode.UNSUPPORTED, "permanent"),
    ],
)
def test_classification(code: int, expected: str) -> None:
    assert classify_exit_code(int(code)) == expected


def test_codes_avoid_reserved_ranges() -> None:
    for code in ExitCode:
        assert code == 0 or 3 <= code < 126, code


def test_reasons_are_camel_case() -> None:
    assert exit_reason(65) == "InvalidData"
    assert exit_reason(137) == "Killed"
    assert exit_reason(3) == "Error"


def test_progress_document_round_trip_and_percent() -> None:
    doc = ProgressDocument(step=30, total_steps=120, epoch=0.5, loss=1.25)
    again = ProgressDocument.model_validate_json(doc.to_json())
    assert again.percent == 25
    assert '"totalSteps":120' in doc.to_json()
    assert ProgressDocument(step=5, total_steps=0).percent == 0
