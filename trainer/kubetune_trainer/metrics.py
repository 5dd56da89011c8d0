"""Prometheus metrics and the /progress endpoint, served by rank 0.

Names carry base units (seconds, bytes) and counters end in ``_total``, per the
Prometheus conventions. One small threaded HTTP server on ``KUBETUNE_METRICS_PORT``
serves ``/metrics``, ``/progress`` (the progress document) and ``/healthz``; a
dedicated registry keeps process-global collectors of other libraries out.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from kubetune.contract.paths import PROGRESS_PORT_PATH
from kubetune_trainer.progress import ProgressReporter

STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class TrainerMetrics:
    """All trainer metrics in one registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "kubetune_trainer"
        self.info = Info(f"{p}_job", "Job, method and model of this trainer.", registry=r)
        self.loss = Gauge(f"{p}_loss", "Training loss of the last optimizer step.", registry=r)
        self.eval_loss = Gauge(
            f"{p}_eval_loss", "Loss on the evaluation set.", ["model"], registry=r
        )
        self.learning_rate = Gauge(f"{p}_learning_rate", "Current learning rate.", registry=r)
        self.grad_norm = Gauge(
            f"{p}_grad_norm", "Global gradient norm before clipping.", registry=r
        )
        self.tokens_per_second = Gauge(
            f"{p}_tokens_per_second", "Non-padding tokens per second (all ranks).", registry=r
        )
        self.samples_per_second = Gauge(
            f"{p}_samples_per_second", "Samples per second (all ranks).", registry=r
        )
        self.step_duration = Histogram(
            f"{p}_step_duration_seconds",
            "Wall time of one optimizer step.",
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.memory = Gauge(f"{p}_memory_bytes", "Memory of rank 0.", ["kind"], registry=r)
        self.steps = Counter(f"{p}_steps", "Optimizer steps done.", registry=r)
        self.tokens = Counter(
            f"{p}_tokens", "Non-padding tokens processed (all ranks).", registry=r
        )
        self.samples = Counter(f"{p}_samples", "Samples processed (all ranks).", registry=r)
        self.skipped_rows = Counter(
            f"{p}_skipped_rows",
            "Invalid dataset rows skipped (skipInvalidRows).",
            ["split"],
            registry=r,
        )
        self.truncated_rows = Counter(
            f"{p}_truncated_rows", "Rows truncated to maxSeqLength.", ["split"], registry=r
        )
        self.skipped_steps = Counter(
            f"{p}_skipped_steps", "Updates skipped for a tolerated non-finite loss.", registry=r
        )
        self.checkpoints = Counter(f"{p}_checkpoints", "Checkpoints written.", registry=r)
        self.checkpoint_duration = Histogram(
            f"{p}_checkpoint_duration_seconds",
            "Time to write a checkpoint.",
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.last_checkpoint_step = Gauge(
            f"{p}_last_checkpoint_step", "Step of the newest complete checkpoint.", registry=r
        )
        self.step = Gauge(f"{p}_step", "Current optimizer step.", registry=r)
        self.total_steps = Gauge(f"{p}_total_steps", "Planned optimizer steps.", registry=r)
        self.epoch = Gauge(f"{p}_epoch", "Fractional epoch.", registry=r)
        self.eta = Gauge(
            f"{p}_eta_seconds", "Estimated seconds to the end of training.", registry=r
        )
        self.world_size = Gauge(f"{p}_world_size", "Processes in the gang.", registry=r)
        self.trainable_parameters = Gauge(
            f"{p}_trainable_parameters", "Parameters being trained.", registry=r
        )
        self.parameters = Gauge(f"{p}_parameters", "All parameters of the model.", registry=r)

    def record_memory(self, device_type: str) -> None:
        rss = _rss_bytes()
        if rss is not None:
            self.memory.labels(kind="rss").set(rss)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.memory.labels(kind="peak_rss").set(peak * (1 if sys.platform == "darwin" else 1024))
        if device_type == "cuda":
            import torch

            self.memory.labels(kind="cuda_allocated").set(torch.cuda.memory_allocated())
            self.memory.labels(kind="cuda_peak_allocated").set(torch.cuda.max_memory_allocated())

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
