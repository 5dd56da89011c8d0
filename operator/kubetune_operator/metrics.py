"""Prometheus metrics of the operator (served on its own port at ``/metrics``).

Every collector is built from its entry in :mod:`kubetune.contract.metrics` (name, help,
labels, buckets), so the exported metrics are exactly the documented ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

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
from kubetune.contract.exit_codes import ExitCode, exit_reason
from kubetune.contract.metrics import MetricSpec, metric
from kubetune_operator.plan import MetricEvent
from kubetune_operator.progress import ProgressError
from kubetune_operator.reasons import INFRASTRUCTURE, Reason

# The *_created series double the output for no use on dashboards or alerts.
disable_created_metrics()

# Label values whose counter series exist at 0 before their first event (Prometheus'
# "initialise your metrics"): a series that first appears at 1 is invisible to increase()
# and rate(), so the first restart or failure of a kind would show in no panel or alert.
#: Why a gang is restarted: the infrastructure, the pod, the trainer's retryable exits.
RESTART_REASONS: tuple[str, ...] = tuple(
    sorted(
        str(reason)
        for reason in {
            *INFRASTRUCTURE,
            Reason.POD_FAILED,
            Reason.OOM_KILLED,
            Reason.STALLED,
            Reason.STARTUP_TIMEOUT,
            Reason.RESTART_REQUESTED,
            exit_reason(ExitCode.RETRYABLE),
            exit_reason(128 + 9),
            exit_reason(128 + 15),
            exit_reason(1),
        }
    )
)
#: Why a job fails: its verdicts and the trainer's permanent exits.
FAILURE_REASONS: tuple[str, ...] = tuple(
    sorted(
        str(reason)
        for reason in {
            Reason.INVALID_SPEC,
            Reason.FORBIDDEN_BY_POLICY,
            Reason.INVALID_CONFIG,
            Reason.BACKOFF_LIMIT_EXCEEDED,
            Reason.DEADLINE_EXCEEDED,
            Reason.VALIDATION_TIMEOUT,
            Reason.POD_CREATION_REFUSED,
            Reason.RESOURCE_CONFLICT,
            *(
                exit_reason(code)
                for code in (
                    ExitCode.INVALID_DATA,
                    ExitCode.MODEL_UNAVAILABLE,
                    ExitCode.NUMERICAL_DIVERGENCE,
                    ExitCode.UNSUPPORTED,
                )
            ),
        }
    )
)
SCRAPE_FAILURE_REASONS: tuple[str, ...] = (
    ProgressError.UNREACHABLE,
    ProgressError.HTTP,
    ProgressError.REDIRECT,
    ProgressError.TOO_LARGE,
    ProgressError.INVALID,
)


def _counter(name: str, registry: CollectorRegistry) -> Counter:
    spec = _spec(name, "counter")
    return Counter(spec.collector_name, spec.help, spec.label_names, registry=registry)


def _gauge(name: str, registry: CollectorRegistry) -> Gauge:
    spec = _spec(name, "gauge")
    return Gauge(spec.collector_name, spec.help, spec.label_names, registry=registry)


def _histogram(name: str, registry: CollectorRegistry) -> Histogram:
    spec = _spec(name, "histogram")
    assert spec.buckets is not None
    return Histogram(
        spec.collector_name, spec.help, spec.label_names, buckets=spec.buckets, registry=registry
    )


def _spec(name: str, kind: str) -> MetricSpec:
    spec = metric(name)
    if spec.type != kind or spec.component != "operator":
        raise ValueError(f"{name} is a {spec.component} {spec.type} in the contract, not {kind}")
    return spec


JOBS = metric("kubetune_jobs")


class _JobsByPhase(Collector):
    """``kubetune_jobs{namespace,phase}``: computed at scrape time from the operator's job
    cache, so it is always exactly the current count (no increments to drift). Every
    phase of a namespace with jobs is listed, zeros included, so ``== 0`` alerts work."""

    def __init__(self, source: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(JOBS.name, JOBS.help, labels=list(JOBS.label_names))
        counts: dict[str, dict[str, int]] = {}
        for namespace, phase in self._source():
            by_phase = counts.setdefault(namespace, dict.fromkeys(PHASES, 0))
            by_phase[phase] = by_phase.get(phase, 0) + 1
        for namespace, by_phase in sorted(counts.items()):
            for phase, count in by_phase.items():
                family.add_metric([namespace, phase], count)
        yield family


@dataclass
class _GpuSeen:
    """The cumulative GPU time last reported for one job (to turn totals into deltas)."""

    allocated: float
    productive: float  # the highest productive total reported (a rollback stays below it)


class OperatorMetrics:
    """All metrics in one registry (a fresh one per operator; tests build their own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.transitions = _counter("kubetune_job_transitions_total", r)
        self.restarts = _counter("kubetune_job_restarts_total", r)
        self.failures = _counter("kubetune_job_failures_total", r)
        self.reconcile_duration = _histogram("kubetune_reconcile_duration_seconds", r)
        self.reconcile_errors = _counter("kubetune_reconcile_errors_total", r)
        self.time_to_running = _histogram("kubetune_job_time_to_running_seconds", r)
        self.scheduling_latency = _histogram("kubetune_job_scheduling_latency_seconds", r)
        self.time_to_first_step = _histogram("kubetune_job_time_to_first_step_seconds", r)
        self.gpu_allocated = _counter("kubetune_gpu_allocated_seconds_total", r)
        self.gpu_productive = _counter("kubetune_gpu_productive_seconds_total", r)
        self.job_gpu_allocated = _gauge("kubetune_job_gpu_allocated_seconds", r)
        self.job_gpu_productive = _gauge("kubetune_job_gpu_productive_seconds", r)
        self.job_gpu_budget = _gauge("kubetune_job_gpu_budget_seconds", r)
        self.job_attempts = _gauge("kubetune_job_attempts", r)
        self.api_requests = _counter("kubetune_operator_api_requests_total", r)
        self.api_latency = _histogram("kubetune_operator_api_request_duration_seconds", r)
        self.leader = _gauge("kubetune_operator_leader", r)
        self.queue_depth = _gauge("kubetune_operator_queue_depth", r)
        self.progress_scrape_failures = _counter("kubetune_progress_scrape_failures_total", r)
        self.status_write_failures = _counter("kubetune_status_write_failures_total", r)
        self._jobs: _JobsByPhase | None = None
        self._gpu_seen: dict[tuple[str, str], _GpuSeen] = {}
        self._namespaces: set[str] = set()
        for reason in FAILURE_REASONS:
            self.failures.labels(reason=reason)
        for reason in SCRAPE_FAILURE_REASONS:
            self.progress_scrape_failures.labels(reason=reason)

    def watch_jobs(self, source: Callable[[], Iterable[tuple[str, str]]]) -> None:
        """Serve ``kubetune_jobs`` from ``source``: (namespace, phase) of every known job."""
        if self._jobs is None:
            self._jobs = _JobsByPhase(source)
            self.registry.register(self._jobs)
        else:
            self._jobs._source = source

    def record(self, events: Iterable[MetricEvent], namespace: str = "") -> None:
        """Count what one reconcile of a job in ``namespace`` decided."""
        if namespace not in self._namespaces:  # a namespace's restart series start at 0
            self._namespaces.add(namespace)
            for reason in RESTART_REASONS:
                self.restarts.labels(namespace=namespace, reason=reason)
        for event in events:
            if event.kind == "transition":
                self.transitions.labels(phase=event.label).inc()
            elif event.kind == "restart":
                self.restarts.labels(namespace=namespace, reason=event.label).inc()
            elif event.kind == "failure":
                self.failures.labels(reason=event.label).inc()
            elif event.kind == "time_to_running":
                self.time_to_running.observe(max(0.0, event.value))
            elif event.kind == "scheduling_latency":
                self.scheduling_latency.observe(max(0.0, event.value))
            elif event.kind == "time_to_first_step":
                self.time_to_first_step.observe(max(0.0, event.value))

    def count_request(self, verb: str, resource: str, code: int, seconds: float = 0.0) -> None:
        self.api_requests.labels(verb=verb, resource=resource, code=str(code)).inc()
        self.api_latency.labels(verb=verb).observe(seconds)

    # -- GPU time --------------------------------------------------------------------------------
    def record_gpu_time(
        self,
        namespace: str,
        queue: str,
        job: str,
        allocated_s: float,
        productive_s: float,
        budget_s: float | None,
        *,
        counted_from_zero: bool = False,
    ) -> None:
        """Report a job's cumulative GPU time (seconds, all attempts so far).

        ``counted_from_zero``: the job was created after this process started, so all of its
        time is new to these counters (no baseline: its first report may already carry
        time, when status writes were coalesced under load).

        Sets the per-job gauges and adds the growth since the previous report of the same
        job to the ``{namespace, queue}`` counters. The first report of a job in this
        process only sets the baseline: a freshly elected leader must not add every
        running job's whole history to its counters at once (``increase()`` would show it
        as spent in that minute); at most one reporting interval per job is left out.
        An allocated total that went down (the status was reset) counts from zero again,
        the way Prometheus treats a counter reset. Productive time goes down by design
        when a restarted gang rolls back to its checkpoint (the redone steps are taken
        off), so its counter only grows above the job's highest productive total so far:
        redone steps are never counted twice.
        """
        allocated_s, productive_s = max(0.0, allocated_s), max(0.0, productive_s)
        labels = {"namespace": namespace, "queue": queue}
        seen = self._gpu_seen.get((namespace, job))
        if seen is None and counted_from_zero:
            seen = _GpuSeen(0.0, 0.0)
        if seen is None:
            high = productive_s
        else:
            grown = allocated_s - seen.allocated if allocated_s >= seen.allocated else allocated_s
            if grown > 0:
                self.gpu_allocated.labels(**labels).inc(grown)
            high = max(seen.productive, productive_s)
            if productive_s > seen.productive:
                self.gpu_productive.labels(**labels).inc(productive_s - seen.productive)
        self._gpu_seen[(namespace, job)] = _GpuSeen(allocated_s, high)
        self.job_gpu_allocated.labels(namespace=namespace, finetunejob=job).set(allocated_s)
        self.job_gpu_productive.labels(namespace=namespace, finetunejob=job).set(productive_s)
        if budget_s is None:
            self.job_gpu_budget.remove(namespace, job)
        else:
            self.job_gpu_budget.labels(namespace=namespace, finetunejob=job).set(budget_s)

    def record_attempts(self, namespace: str, job: str, attempts: int) -> None:
        """A job's gang attempts so far (``status.attempts``), once it has started one."""
        if attempts > 0:
            self.job_attempts.labels(namespace=namespace, finetunejob=job).set(attempts)

    def forget_job(self, namespace: str, job: str) -> None:
        """Drop a deleted job's per-job series (and its baseline); the namespace/queue
        counters keep what it used."""
        self._gpu_seen.pop((namespace, job), None)
        per_job = (self.job_gpu_allocated, self.job_gpu_productive, self.job_gpu_budget)
        for gauge in (*per_job, self.job_attempts):
            gauge.remove(namespace, job)  # a no-op for series never set
