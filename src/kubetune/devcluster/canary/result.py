"""A run's result, and the detection times it is judged by."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubetune.devcluster.canary.scenarios import CANDIDATE_MODEL, Outcome
from kubetune.devcluster.canary.timeline import timestamp_of


# -- the result ----------------------------------------------------------------------------------
@dataclass
class CanaryResult:
    """What one run did.

    Detection time of a bad candidate (``detect_s``): from ``fault_visible_at`` -- the time of
    the first analysis measurement, of the scenario's fault metric, with enough samples of
    the candidate to judge it (any verdict but Inconclusive; the fault is injected from the
    first request, so this is the first measurement that could see it) -- to
    ``weight_zero_at``, the moment the route's candidate weight was observed written back to
    0 (a watch on the HTTPRoute). ``react_s`` is from the first Failed (or Worse) measurement
    to that write: the "within one analysis interval" promise. ``exposure_s`` is from the
    candidate's first traffic (the first route write with its weight above 0) to that write:
    how long users were exposed to the bad candidate.
    """

    scenario: str
    expected: str
    seed: int
    outcome: Outcome
    interval_seconds: int
    started_at: float
    finished_at: float
    phase: str | None = None
    pause_reason: str | None = None
    abort: dict[str, Any] | None = None
    traffic_started_at: float | None = None
    fault_visible_at: float | None = None
    first_failure_at: float | None = None
    weight_zero_at: float | None = None
    max_weight: int = 0
    measurements: list[dict[str, Any]] = field(default_factory=list)
    route_changes: list[dict[str, Any]] = field(default_factory=list)
    step_changes: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    load: dict[str, Any] = field(default_factory=dict)

    @property
    def correct(self) -> bool:
        return self.outcome == self.expected

    @property
    def detect_s(self) -> float | None:
        if self.fault_visible_at is None or self.weight_zero_at is None:
            return None
        return max(0.0, self.weight_zero_at - self.fault_visible_at)

    @property
    def exposed_at(self) -> float | None:
        """When the route first gave the candidate traffic (weight > 0), per the watch."""
        return next(
            (c["time"] for c in self.route_changes if c["weights"].get(CANDIDATE_MODEL, 0) > 0),
            None,
        )

    @property
    def exposure_s(self) -> float | None:
        """First traffic to the candidate -> its weight written back to 0."""
        exposed = self.exposed_at
        if exposed is None or self.weight_zero_at is None:
            return None
        return self.weight_zero_at - exposed

    @property
    def react_s(self) -> float | None:
        if self.first_failure_at is None or self.weight_zero_at is None:
            return None
        return max(0.0, self.weight_zero_at - self.first_failure_at)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.update(
            correct=self.correct,
            detect_s=self.detect_s,
            react_s=self.react_s,
            exposed_at=self.exposed_at,
            exposure_s=self.exposure_s,
        )
        for key in ("detect", "exposure"):
            value = doc[f"{key}_s"]
            if value is not None:
                doc[f"{key}_intervals"] = value / self.interval_seconds
        return doc


def weight_zero_time(changes: list[dict[str, Any]]) -> float | None:
    """When the candidate's weight first went from above 0 back to 0 (the abort's write)."""
    for before, after in itertools.pairwise(changes):
        was = before["weights"].get(CANDIDATE_MODEL, 0)
        now = after["weights"].get(CANDIDATE_MODEL, 0)
        if was > 0 and now == 0:
            return float(after["time"])
    return None


def summarize_detection(
    result: CanaryResult, fault_metric: str | None, min_samples: Mapping[str, int]
) -> None:
    """Fill ``fault_visible_at`` and ``first_failure_at`` from the measurements."""
    for m in result.measurements:
        if fault_metric is not None and m.get("metric") != fault_metric:
            continue
        at = timestamp_of(m.get("time"))
        if at is None or int(m.get("weight") or 0) <= 0:
            continue
        samples = m.get("candidateSamples")
        enough = m.get("verdict") in ("Successful", "Failed") or (
            samples is not None and samples >= min_samples.get(str(m.get("metric")), 0)
        )
        if enough and result.fault_visible_at is None:
            result.fault_visible_at = at
        if m.get("verdict") == "Failed" and result.first_failure_at is None:
            result.first_failure_at = at
    abort = result.abort or {}
    if result.first_failure_at is None and abort.get("time"):
        result.first_failure_at = timestamp_of(abort["time"])  # a sequential Worse is recorded here
    if result.fault_visible_at is None:
        result.fault_visible_at = result.first_failure_at


def write_result(result: CanaryResult, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(), indent=2, default=str))
    return path
