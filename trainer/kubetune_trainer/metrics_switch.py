"""``KUBETUNE_METRICS=off``: a benchmark and debugging switch for rank 0's observability.

With it, the trainer serves no ``/metrics`` or ``/progress``, updates no Prometheus
collector, writes no progress document and records no training curves; the run log
(``train_log.jsonl``) and the outputs stay. It exists to measure what observability costs
(``benchmarks/trainer/metrics_overhead.py``) and to rule it out while debugging — a real
job keeps it on: without the progress document the operator cannot follow the run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

METRICS_SWITCH_ENV = "KUBETUNE_METRICS"
OFF_VALUES = frozenset({"off", "0", "false", "no", "disabled"})


def metrics_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(METRICS_SWITCH_ENV, "on").strip().lower() not in OFF_VALUES


class Absorb:
    """Accepts any attribute access and call and does nothing: stands in for the metrics
    collectors and the progress reporter, so the loop needs no ``if`` per call."""

    def __getattr__(self, name: str) -> Any:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self


class NullMetrics(Absorb):
    """``TrainerMetrics`` with every update a no-op and an empty exposition."""

    def exposition(self) -> bytes:
        return b""
