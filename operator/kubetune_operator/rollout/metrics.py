"""The ``kubetune_rollout_*`` metrics (contract: ``kubetune.contract.metrics.ROLLOUT_METRICS``).

Weight and phase are computed at scrape time from the controller's view of the rollouts
(like ``kubetune_jobs``), so they are exactly the current status with nothing to drift or
to forget; the counters count what reconciles decided.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kubetune.api.rollout import ROLLOUT_PHASES, Measurement
from kubetune.contract.metrics import metric

disable_created_metrics()  # as the operator's own metrics: *_created doubles the output

WEIGHT = metric("kubetune_rollout_candidate_weight")
PHASE = metric("kubetune_rollout_phase")
VERDICTS = ("Successful", "Failed", "Inconclusive", "Error")
ABORT_REASONS = (
    "MetricFailed",
    "SequentialTestWorse",
    "QueryErrors",
    "ProgressDeadlineExceeded",
    "AbortedByUser",
)


@dataclass(frozen=True)
class RolloutSample:
    """One rollout as the gauges show it."""

    namespace: str
    name: str
    phase: str
    weight: int


class _Gauges(Collector):
    def __init__(self, source: Callable[[], Iterable[RolloutSample]]) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        samples = sorted(self.source(), key=lambda s: (s.namespace, s.name))
        weight = GaugeMetricFamily(WEIGHT.name, WEIGHT.help, labels=list(WEIGHT.label_names))
        phase = GaugeMetricFamily(PHASE.name, PHASE.help, labels=list(PHASE.label_names))
        for s in samples:
            weight.add_metric([s.namespace, s.name], s.weight)
            for name in ROLLOUT_PHASES:
                phase.add_metric([s.namespace, s.name, name], 1 if s.phase == name else 0)
        yield weight
        yield phase


def _counter(name: str, registry: CollectorRegistry) -> Counter:
    spec = metric(name)
    assert spec.type == "counter" and spec.component == "operator", name
    return Counter(spec.collector_name, spec.help, spec.label_names, registry=registry)


class RolloutMetrics:
    """Registered into the operator's registry (one ``/metrics``)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        source: Callable[[], Iterable[RolloutSample]],
    ) -> None:
        self.measurements = _counter("kubetune_rollout_measurements_total", registry)
        self.aborts = _counter("kubetune_rollout_aborts_total", registry)
        self.promotions = _counter("kubetune_rollout_promotions_total", registry)
        registry.register(_Gauges(source))
        self._namespaces: set[str] = set()

    def _namespace(self, namespace: str) -> None:
        """A namespace's abort and promotion series start at 0 (visible to increase())."""
        if namespace in self._namespaces:
            return
        self._namespaces.add(namespace)
        self.promotions.labels(namespace=namespace)
        for reason in ABORT_REASONS:
            self.aborts.labels(namespace=namespace, reason=reason)

    def record(
        self,
        namespace: str,
        measured: Iterable[Measurement],
        aborted: str | None,
        promoted: bool,
    ) -> None:
        self._namespace(namespace)
        for m in measured:
            self.measurements.labels(namespace=namespace, metric=m.metric, verdict=m.verdict).inc()
        if aborted:
            self.aborts.labels(namespace=namespace, reason=aborted).inc()
        if promoted:
            self.promotions.labels(namespace=namespace).inc()
