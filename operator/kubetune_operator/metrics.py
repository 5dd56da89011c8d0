"""Prometheus metrics of the operator (served on its own port at ``/metrics``).

Names follow the Prometheus conventions: base units (seconds), ``_total`` for counters,
labels with small fixed value sets (phase, reason, verb).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kubetune.api.status import PHASES
from kubetune_operator.plan import MetricEvent

# The *_created series double the output for no use on dashboards or alerts.
disable_created_metrics()


class _JobsByPhase(Collector):
    """``kubetune_jobs{phase}``: computed at scrape time from the operator's job cache, so
    it is always exactly the current count (no increments to drift)."""

    def __init__(self, source: Callable[[], Iterable[str]]) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "kubetune_jobs", "FineTuneJobs known to this operator, by phase.", labels=["phase"]
        )
        counts = dict.fromkeys(PHASES, 0)
        for phase in self._source():
            counts[phase] = counts.get(phase, 0) + 1
        for phase, count in counts.items():
            family.add_metric([phase], count)
        yield family


class OperatorMetrics:
    """All metrics in one registry (a fresh one per operator; tests build their own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.transitions = Counter(
            "kubetune_job_transitions",
            "Phase transitions of FineTuneJobs, by the phase entered.",
            ["phase"],
            registry=r,
        )
        self.restarts = Counter(
            "kubetune_job_restarts",
            "Gang restarts after retryable failures, by failure reason.",
            ["reason"],
            registry=r,
        )
        self.failures = Counter(
            "kubetune_job_failures",
            "FineTuneJobs that failed, by reason.",
            ["reason"],
            registry=r,
        )
        self.reconcile_duration = Histogram(
            "kubetune_reconcile_duration_seconds",
            "Time to reconcile one FineTuneJob (decide + API calls).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.time_to_running = Histogram(
            "kubetune_job_time_to_running_seconds",
            "Time from FineTuneJob creation to its first gang running.",
            buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600),
            registry=r,
        )
        self.gpu_seconds = Counter(
            "kubetune_gpu_seconds",
            "GPU time held by running gangs (GPUs x seconds).",
            registry=r,
        )
        self.api_requests = Counter(
            "kubetune_operator_api_requests",
            "Requests the operator's own client sent to the API server.",
            ["verb", "resource", "code"],
            registry=r,
        )
        self.api_latency = Histogram(
            "kubetune_operator_api_request_duration_seconds",
            "Latency of the operator's own API requests.",
            ["verb"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.leader = Gauge(
            "kubetune_operator_leader",
            "1 while this replica holds the leader lease (or runs standalone).",
            registry=r,
        )
        self.queue_depth = Gauge(
            "kubetune_operator_queue_depth",
            "FineTuneJobs waiting to be reconciled.",
            registry=r,
        )
        self.progress_scrape_failures = Counter(
            "kubetune_progress_scrape_failures",
            "Failed reads of rank 0's progress document, by reason (unreachable, http, "
            "redirect, too_large, invalid): the job's progress is unknown, not stalled.",
            ["reason"],
            registry=r,
        )
        self.status_write_failures = Counter(
            "kubetune_status_write_failures",
            "FineTuneJob status writes the API server refused, by HTTP status code.",
            ["code"],
            registry=r,
        )
        self._jobs: _JobsByPhase | None = None

    def watch_jobs(self, source: Callable[[], Iterable[str]]) -> None:
        """Serve ``kubetune_jobs`` from ``source`` (phases of all known jobs)."""
        if self._jobs is None:
            self._jobs = _JobsByPhase(source)
            self.registry.register(self._jobs)
        else:
            self._jobs._source = source

    def record(self, events: Iterable[MetricEvent]) -> None:
        for event in events:
            if event.kind == "transition":
                self.transitions.labels(phase=event.label).inc()
            elif event.kind == "restart":
                self.restarts.labels(reason=event.label).inc()
            elif event.kind == "failure":
                self.failures.labels(reason=event.label).inc()
            elif event.kind == "time_to_running":
                self.time_to_running.observe(max(0.0, event.value))

    def count_request(self, verb: str, resource: str, code: int, seconds: float = 0.0) -> None:
        self.api_requests.labels(verb=verb, resource=resource, code=str(code)).inc()
        self.api_latency.labels(verb=verb).observe(seconds)
