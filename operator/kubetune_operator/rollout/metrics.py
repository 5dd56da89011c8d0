"""The ``kubetune_rollout_*`` metrics (contract: ``kubetune.contract.metrics.ROLLOUT_METRICS``).

Weight, phase and pause reason are computed at scrape time from the controller's view of
the rollouts (like ``kubetune_jobs``), so they are exactly the current status with nothing
to drift or to forget; the counters count what reconciles decided, per rollout. A rollout's
counter series are created at 0 when it is first reconciled (each analysis metric's as
soon as the controller sees it in the spec), so ``increase()`` sees the first measurement,
abort or promotion; they are removed when the rollout is deleted, so they do not pile up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kubetune.api.rollout import ROLLOUT_PHASES, Measurement
from kubetune.contract.metrics import metric
from kubetune_operator.rollout.state import ANALYSIS_INCONCLUSIVE, PAUSE_STEP

disable_created_metrics()  # as the operator's own metrics: *_created doubles the output

WEIGHT = metric("kubetune_rollout_candidate_weight")
PHASE = metric("kubetune_rollout_phase")
PAUSED = metric("kubetune_rollout_paused")
VERDICTS = ("Successful", "Failed", "Inconclusive", "Error")
PAUSE_REASONS = (PAUSE_STEP, ANALYSIS_INCONCLUSIVE)
ABORT_REASONS = (
    "MetricFailed",
    "SequentialTestWorse",
    "QueryErrors",
    "ProgressDeadlineExceeded",
    "AbortedByUser",
)

#: A rollout: (namespace, name).
Key = tuple[str, str]


@dataclass(frozen=True)
class RolloutSample:
    """One rollout as the gauges show it."""

    namespace: str
    name: str
    phase: str
    weight: int
    pause_reason: str | None = None


class _Gauges(Collector):
    def __init__(self, source: Callable[[], Iterable[RolloutSample]]) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        samples = sorted(self.source(), key=lambda s: (s.namespace, s.name))
        weight = GaugeMetricFamily(WEIGHT.name, WEIGHT.help, labels=list(WEIGHT.label_names))
        phase = GaugeMetricFamily(PHASE.name, PHASE.help, labels=list(PHASE.label_names))
        paused = GaugeMetricFamily(PAUSED.name, PAUSED.help, labels=list(PAUSED.label_names))
        for s in samples:
            weight.add_metric([s.namespace, s.name], s.weight)
            for name in ROLLOUT_PHASES:
                phase.add_metric([s.namespace, s.name, name], 1 if s.phase == name else 0)
            reason = s.pause_reason if s.phase == "Paused" else None
            for name in PAUSE_REASONS:
                paused.add_metric([s.namespace, s.name, name], 1 if reason == name else 0)
        yield weight
        yield phase
        yield paused


class _RolloutCounter:
    """A counter whose series belong to rollouts. Each series is remembered under its
    rollout so that :meth:`forget` removes exactly that rollout's series (prometheus-client
    0.21, our lowest, cannot remove by a partial label set)."""

    def __init__(self, name: str, registry: CollectorRegistry) -> None:
        spec = metric(name)
        assert spec.type == "counter" and spec.component == "operator", name
        assert spec.label_names[:2] == ("namespace", "modelrollout"), name
        self.counter = Counter(spec.collector_name, spec.help, spec.label_names, registry=registry)
        self._series: dict[Key, set[tuple[str, ...]]] = {}

    def series(self, key: Key, *rest: str) -> Counter:
        """The rollout's series whose labels after ``namespace, modelrollout`` are ``rest``
        (created at 0 on first use)."""
        values = (*key, *rest)
        self._series.setdefault(key, set()).add(values)
        return self.counter.labels(*values)

    def forget(self, key: Key) -> None:
        for values in self._series.pop(key, set()):
            self.counter.remove(*values)


class RolloutMetrics:
    """Registered into the operator's registry (one ``/metrics``)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        source: Callable[[], Iterable[RolloutSample]],
    ) -> None:
        self.measurements = _RolloutCounter("kubetune_rollout_measurements_total", registry)
        self.aborts = _RolloutCounter("kubetune_rollout_aborts_total", registry)
        self.promotions = _RolloutCounter("kubetune_rollout_promotions_total", registry)
        registry.register(_Gauges(source))
        self._started: dict[Key, set[str]] = {}  # rollout -> analysis metrics started at 0

    def start(self, namespace: str, name: str, analysis_metrics: Iterable[str]) -> None:
        """Start the rollout's abort and promotion series and every verdict of each of its
        analysis metrics at 0, so increase() sees their first event; idempotent."""
        key = (namespace, name)
        started = self._started.get(key)
        if started is None:
            started = self._started[key] = set()
            self.promotions.series(key)
            for reason in ABORT_REASONS:
                self.aborts.series(key, reason)
        for analysis_metric in analysis_metrics:
            if analysis_metric not in started:
                started.add(analysis_metric)
                for verdict in VERDICTS:
                    self.measurements.series(key, analysis_metric, verdict)

    def record(
        self,
        namespace: str,
        name: str,
        measured: Iterable[Measurement],
        aborted: str | None,
        promoted: bool,
    ) -> None:
        """Count what one reconcile of the rollout decided."""
        key = (namespace, name)
        measured = list(measured)
        self.start(namespace, name, [m.metric for m in measured])
        for m in measured:
            self.measurements.series(key, m.metric, m.verdict).inc()
        if aborted:
            self.aborts.series(key, aborted).inc()
        if promoted:
            self.promotions.series(key).inc()

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted rollout's counter series (its gauges go with the cache entry)."""
        key = (namespace, name)
        self._started.pop(key, None)
        for counter in (self.measurements, self.aborts, self.promotions):
            counter.forget(key)
