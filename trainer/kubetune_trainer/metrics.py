"""Prometheus metrics and the /progress endpoint, served by rank 0.

Every collector is built from its entry in :mod:`kubetune.contract.metrics` (name, help,
labels, buckets), which holds the names to the Prometheus conventions. One small
threaded HTTP server on ``KUBETUNE_METRICS_PORT`` serves ``/metrics``, ``/progress`` (the
progress document) and ``/healthz``; a dedicated registry keeps process-global collectors
of other libraries out.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kubetune.contract.metrics import TRAINER_METRICS, MetricSpec, metric, rl_metric_name
from kubetune.contract.paths import PROGRESS_PORT_PATH
from kubetune_trainer.progress import ProgressReporter

# The *_created series add one series per counter and histogram for no use on dashboards.
disable_created_metrics()

#: Dense (no sparsity) bf16 tensor-core peak FLOP/s, by a substring of the CUDA device name
#: (first match wins, so the more specific names come first). Unlisted GPUs get no MFU.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),  # GH200 too
    ("H100 PCIE", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM ("H100 80GB HBM3")
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
)


def peak_flops(device_name: str) -> float | None:
    """The device's dense bf16 peak FLOP/s, or None when it is not in the table."""
    upper = device_name.upper()
    for needle, flops in PEAK_BF16_FLOPS:
        if needle in upper:
            return flops
    return None


class OptionalGauge(Collector):
    """An unlabelled gauge that is absent until first set: a metric that cannot be
    computed here (no GPU, unknown peak) must not read as a real 0."""

    def __init__(self, spec: MetricSpec, registry: CollectorRegistry) -> None:
        self.spec = spec
        self.value: float | None = None
        registry.register(self)

    def set(self, value: float) -> None:
        self.value = float(value)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.spec.name, self.spec.help)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.value is not None:
            yield GaugeMetricFamily(self.spec.name, self.spec.help, value=self.value)


def _spec(name: str, kind: str) -> MetricSpec:
    spec = metric(name)
    if spec.type != kind or spec.component != "trainer":
        raise ValueError(f"{name} is a {spec.component} {spec.type} in the contract, not {kind}")
    return spec


class TrainerMetrics:
    """All trainer metrics in one registry, each built from its contract entry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()

        def counter(name: str) -> Counter:
            spec = _spec(name, "counter")
            return Counter(spec.collector_name, spec.help, spec.label_names, registry=r)

        def gauge(name: str) -> Gauge:
            spec = _spec(name, "gauge")
            return Gauge(spec.collector_name, spec.help, spec.label_names, registry=r)

        def histogram(name: str) -> Histogram:
            spec = _spec(name, "histogram")
            assert spec.buckets is not None
            return Histogram(
                spec.collector_name, spec.help, spec.label_names, buckets=spec.buckets, registry=r
            )

        self._info_spec = info = _spec("kubetune_trainer_job_info", "info")
        self.info = Info(info.collector_name, info.help, registry=r)
        p = "kubetune_trainer"
        # Absent until the attempt's first step: a gang still loading its model has no loss
        # or rate, and a 0 would dip every panel at each restart and drag the loss averages
        # that alerts compare against.
        self.loss = OptionalGauge(_spec(f"{p}_loss", "gauge"), r)
        self.eval_loss = gauge(f"{p}_eval_loss")
        self.learning_rate = OptionalGauge(_spec(f"{p}_learning_rate", "gauge"), r)
        self.grad_norm = OptionalGauge(_spec(f"{p}_grad_norm", "gauge"), r)
        self.tokens_per_second = OptionalGauge(_spec(f"{p}_tokens_per_second", "gauge"), r)
        self.samples_per_second = OptionalGauge(_spec(f"{p}_samples_per_second", "gauge"), r)
        self.step_duration = histogram(f"{p}_step_duration_seconds")
        self.data_wait = counter(f"{p}_data_wait_seconds_total")
        self.memory = gauge(f"{p}_memory_bytes")
        self.accelerator_memory_peak = OptionalGauge(
            _spec(f"{p}_accelerator_memory_peak_bytes", "gauge"), r
        )
        self.mfu = OptionalGauge(_spec(f"{p}_model_flops_utilization_ratio", "gauge"), r)
        self.steps = counter(f"{p}_steps_total")
        self.tokens = counter(f"{p}_tokens_total")
        self.samples = counter(f"{p}_samples_total")
        self.skipped_rows = counter(f"{p}_skipped_rows_total")
        self.truncated_rows = counter(f"{p}_truncated_rows_total")
        self.skipped_steps = counter(f"{p}_skipped_steps_total")
        self.checkpoints = counter(f"{p}_checkpoints_total")
        self.checkpoint_duration = histogram(f"{p}_checkpoint_duration_seconds")
        self.last_checkpoint_step = gauge(f"{p}_last_checkpoint_step")
        self.step = gauge(f"{p}_step")
        self.total_steps = gauge(f"{p}_total_steps")
        self.epoch = gauge(f"{p}_epoch")
        self.eta = gauge(f"{p}_eta_seconds")
        self.world_size = gauge(f"{p}_world_size")
        self.trainable_parameters = gauge(f"{p}_trainable_parameters")
        self.parameters = gauge(f"{p}_parameters")
        # online RL (absent for other methods): one gauge per field of the train log
        self.rl = {
            spec.name: OptionalGauge(spec, r)
            for spec in TRAINER_METRICS
            if spec.name.startswith(f"{p}_rl_") and spec.type == "gauge"
        }
        self.guard_warnings = counter(f"{p}_rl_guard_warnings_total")
        self.continual_penalty = OptionalGauge(_spec(f"{p}_continual_penalty", "gauge"), r)
        # differential privacy (absent without spec.differentialPrivacy)
        self.dp_epsilon = OptionalGauge(_spec(f"{p}_dp_epsilon", "gauge"), r)
        self.dp_target_epsilon = OptionalGauge(_spec(f"{p}_dp_target_epsilon", "gauge"), r)
        # mixture of experts (absent for dense models; set by kubetune_trainer.moe.report)
        self.moe_expert_token_ratio = gauge(f"{p}_moe_expert_token_ratio")
        self.moe_max_expert_token_ratio = gauge(f"{p}_moe_max_expert_token_ratio")
        self.moe_routing_entropy = gauge(f"{p}_moe_routing_entropy_nats")
        self.moe_aux_loss = OptionalGauge(_spec(f"{p}_moe_aux_loss", "gauge"), r)
        # 6 x parameters / (world size x peak): FLOP/s per GPU over its peak, per token/s.
        self._mfu_per_token_per_second: float | None = None

    def record_rl(self, fields: dict[str, float]) -> None:
        """Set the gauge of every exported online-RL field (``objective/kl``, ...)."""
        for field, value in fields.items():
            gauge = self.rl.get(rl_metric_name(field))
            if gauge is not None:
                gauge.set(value)

    def set_info(self, values: dict[str, str]) -> None:
        """``kubetune_trainer_job_info``: exactly the labels the contract lists."""
        if set(values) != set(self._info_spec.label_names):
            raise ValueError(f"job info {sorted(values)} != {self._info_spec.label_names}")
        self.info.info(values)

    def set_flops_model(self, parameters: int, device: Any, world_size: int) -> None:
        """Enable MFU: ``parameters`` of the model, on ``device`` (a torch.device), in a gang
        of ``world_size``. Only CUDA devices whose peak is known get an MFU series; the
        6N FLOPs per token estimate (forward + backward) ignores attention's own FLOPs."""
        if getattr(device, "type", None) != "cuda" or parameters <= 0 or world_size <= 0:
            return
        import torch

        peak = peak_flops(torch.cuda.get_device_name(device))
        if peak is not None:
            self.configure_mfu(parameters, world_size, peak)

    def configure_mfu(self, parameters: int, world_size: int, peak: float) -> None:
        """MFU = 6 x ``parameters`` x tokens/s / (``world_size`` x ``peak`` FLOP/s)."""
        self._mfu_per_token_per_second = 6.0 * parameters / (world_size * peak)

    def record_mfu(self, tokens_per_second: float) -> None:
        """Model FLOPs utilisation of a step that processed ``tokens_per_second`` (all ranks)."""
        if self._mfu_per_token_per_second is not None and tokens_per_second >= 0:
            self.mfu.set(min(1.0, tokens_per_second * self._mfu_per_token_per_second))

    def record_memory(self, device_type: str) -> None:
        rss = _rss_bytes()
        if rss is not None:
            self.memory.labels(kind="rss").set(rss)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.memory.labels(kind="peak_rss").set(peak * (1 if sys.platform == "darwin" else 1024))
        if device_type == "cuda":
            import torch

            self.memory.labels(kind="cuda_allocated").set(torch.cuda.memory_allocated())
            self.accelerator_memory_peak.set(torch.cuda.max_memory_allocated())

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _rss_bytes() -> int | None:
    try:
        with open(f"/proc/{os.getpid()}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class MetricsServer:
    """``/metrics``, ``/progress`` and ``/healthz`` on one port (rank 0 only)."""

    def __init__(self, metrics: TrainerMetrics, progress: ProgressReporter, port: int) -> None:
        self.metrics = metrics
        self.progress = progress
        self.requested_port = port
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        return self.server.server_address[1] if self.server else None

    def start(self) -> None:
        metrics, progress = self.metrics, self.progress

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, metrics.exposition(), CONTENT_TYPE_LATEST)
                elif path == PROGRESS_PORT_PATH:
                    self._send(200, progress.json().encode(), "application/json")
                elif path == "/healthz":
                    self._send(200, b"ok\n", "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("0.0.0.0", self.requested_port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="kubetune-metrics", daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
