"""The progress file is throttled (a write per step is a measurable cost); HTTP is live."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune_trainer import progress as progress_module
from kubetune_trainer.progress import ProgressReporter


def test_progress_file_is_throttled_but_state_changes_are_written_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    path = tmp_path / "progress.json"
    reporter = ProgressReporter(path)

    def on_disk() -> dict:
        return json.loads(path.read_text())

    reporter.update(state="training", step=1, total_steps=10)
    assert on_disk()["step"] == 1
    clock[0] += 0.1
    reporter.update(step=2)
    assert on_disk()["step"] == 1  # within the interval: not rewritten
    assert json.loads(reporter.json())["step"] == 2  # /progress is current
    clock[0] += progress_module.WRITE_INTERVAL_SECONDS
    reporter.update(step=3)
    assert on_disk()["step"] == 3
    clock[0] += 0.1
    reporter.update(state="saving", step=4)  # a new state is written at once
    assert on_disk()["state"] == "saving" and on_disk()["step"] == 4
    clock[0] += 0.1
    reporter.update(state="training", step=5)
    reporter.update(step=6)
    reporter.stop()  # the last document always reaches the file
    assert on_disk()["step"] == 6
