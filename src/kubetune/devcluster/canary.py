"""The canary lab: a ModelRollout driven end to end on the dev cluster, with real parts.

One harness behind the rollout e2e test, ``benchmarks/bench_rollout.py`` and the local demo
(``kubetune dev canary``). For one :class:`Scenario` a :class:`CanaryLab` run:

1. starts two ``kubetune serve`` processes on the tiny local model: the baseline (the base
   model) and the candidate (the base plus a LoRA adapter really trained by the trainer, or
   the base with injected faults for a bad candidate); registers both as scrape targets of
   the real Prometheus (file_sd pool ``kubetune-serve``);
2. creates their Services and EndpointSlices (pointing at this machine's address: there is
   no pod network) and the HTTPRoute (baseline 100, candidate 0), and starts the weighted router
   that follows the route's weights (the stand-in for a Gateway data plane);
3. creates the candidate's FineTuneJob and makes it Succeed with ``Promotable=True`` the KWOK
   way (its fake pods exit 0, rank 0 with the evaluation summary in its termination message);
4. creates the ModelRollout (analysis on that Prometheus every ``interval_seconds``), runs the
   load generator (simulated users who post feedback) through the router, and records a
   timeline every second -- route weights, phase, step, and per model the p95 latency, error
   rate and positive-feedback share queried from Prometheus -- until the rollout is
   Promoted, RolledBack or Failed, pauses as Inconclusive, or the time is up.

The operator itself is NOT started here: the e2e tests use the session's operator, the demo
starts one. Detection time is defined in :class:`CanaryResult`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from kubetune.api.rollout import ModelRollout, as_manifest
from kubetune.devcluster.cluster import run_kubectl
from kubetune.devcluster.kueue import host_ipv4
from kubetune.devcluster.procs import ProcInfo, free_port, spawn, terminate
from kubetune.devcluster.prometheus import SERVE_SD_SUBDIR, PrometheusAPI, write_target
from kubetune.devcluster.router import local_backend_manifests
from kubetune.devcluster.versions import DevClusterError

BASELINE_MODEL = "canary-base"
CANDIDATE_MODEL = "canary-tuned"
ROUTE = "canary"
#: the candidate's FineTuneJob (the operator names its headless Service after the job, so
#: never the same name as a model's Service)
CANDIDATE_JOB = "canary-lora-job"
SERVICE_PORT = 8000
PORT_NAME = "http"
GATEWAY_GROUP = "gateway.networking.k8s.io"

Outcome = Literal["Promoted", "RolledBack", "Failed", "Inconclusive", "Timeout"]
Log = Callable[[str], None]


# -- scenarios ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Faults:
    """What the candidate server is told to do wrong (``kubetune serve --inject-*``)."""

    latency_s: float = 0.0
    error_rate: float = 0.0
    degenerate_rate: float = 0.0

    def argv(self, seed: int) -> list[str]:
        if not (self.latency_s or self.error_rate or self.degenerate_rate):
            return []
        return [
            f"--inject-latency-seconds={self.latency_s}",
            f"--inject-error-rate={self.error_rate}",
            f"--inject-degenerate-rate={self.degenerate_rate}",
            f"--fault-seed={seed}",
        ]


@dataclass(frozen=True)
class Scenario:
    """A candidate and its traffic, with the outcome a correct rollout must reach."""

    name: str
    description: str
    expected: Outcome
    faults: Faults = field(default_factory=Faults)
    traffic: bool = True
    #: the analysis metric that must abort a bad candidate
    fault_metric: str | None = None

    @property
    def bad(self) -> bool:
        return self.expected == "RolledBack"


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("good", "the tuned LoRA adapter, no faults", "Promoted"),
        Scenario(
            "latency",
            "1 s added to every candidate request",
            "RolledBack",
            Faults(latency_s=1.0),
            fault_metric="p95-latency",
        ),
        Scenario(
            "errors",
            "half the candidate's requests fail with HTTP 500",
            "RolledBack",
            Faults(error_rate=0.5),
            fault_metric="error-rate",
        ),
        Scenario(
            "quality",
            "70 % of the candidate's answers are empty (users vote them down)",
            "RolledBack",
            Faults(degenerate_rate=0.7),
            fault_metric="positive-feedback",
        ),
        Scenario(
            "no-traffic",
            "the tuned adapter, but no requests at all",
            "Inconclusive",
            traffic=False,
        ),
    )
}


@dataclass(frozen=True)
class LabSettings:
    """Timings and load; the defaults keep one run near a minute on 2 CPU cores."""

    interval_seconds: int = 5
    weights: tuple[int, ...] = (25, 50)
    min_intervals: int = 2
    max_intervals: int = 8
    rate: float = 6.0
    concurrency: int = 4
    max_tokens: int = 4
    satisfied_rate: float = 0.8
    min_samples: int = 3
    feedback_min_samples: int = 10
    timeout_s: float = 240.0
    #: after an Inconclusive pause, watch this many more intervals (it must never promote)
    settle_intervals: int = 2
    threads_per_server: int = 1


def analysis_spec(settings: LabSettings, prometheus_url: str) -> dict[str, Any]:
    """The rollout's analysis: latency and errors against the baseline, feedback by SPRT.

    Allowances are generous in absolute terms because the tiny model answers in tens of
    milliseconds on a shared CPU, where scheduling noise is a large relative difference;
    the injected faults are far beyond them.
    """
    n = settings.min_samples
    requests = (
        'sum(increase(vllm:request_success_total{model_name="${model}"}[${interval}])) + '
        'sum(increase(kubetune_serve_request_errors_total{model_name="${model}"}[${interval}]))'
    )
    errors = (
        'sum(increase(kubetune_serve_request_errors_total{model_name="${model}"}[${interval}]))'
    )
    feedback = 'sum(increase(kubetune_serve_feedback_total{model_name="${model}"%s}[${window}]))'
    return {
        "intervalSeconds": settings.interval_seconds,
        "prometheus": {"address": prometheus_url},
        "metrics": [
            {
                "name": "p95-latency",
                "direction": "LowerIsBetter",
                "query": "histogram_quantile(0.95, sum by (le) (rate("
                'vllm:e2e_request_latency_seconds_bucket{model_name="${model}"}[${interval}])))',
                "baseline": {"maxRelativeDegradation": 1.0, "maxAbsoluteDegradation": 0.4},
                "samplesQuery": "sum(increase(vllm:e2e_request_latency_seconds_count"
                '{model_name="${model}"}[${interval}]))',
                "minSamples": n,
            },
            {
                "name": "error-rate",
                "direction": "LowerIsBetter",
                "query": f"({errors}) / clamp_min({requests}, 1)",
                "baseline": {"maxAbsoluteDegradation": 0.1},
                "samplesQuery": requests,
                "minSamples": n,
            },
            {
                "name": "positive-feedback",
                "direction": "HigherIsBetter",
                "sequential": {
                    "type": "Proportion",
                    "successQuery": feedback % ',rating="positive"',
                    "totalQuery": feedback % "",
                    "minimumDetectableEffect": 0.4,
                    "alpha": 0.01,
                    "beta": 0.05,
                },
                "minSamples": settings.feedback_min_samples,
            },
        ],
    }


def rollout_manifest(
    name: str, namespace: str, settings: LabSettings, prometheus_url: str, job: str
) -> dict[str, Any]:
    """The ModelRollout (validated by the API model before it is sent)."""
    steps: list[dict[str, Any]] = []
    for weight in settings.weights:
        steps.append({"setWeight": weight})
        steps.append(
            {
                "analysis": {
                    "minIntervals": settings.min_intervals,
                    "maxIntervals": settings.max_intervals,
                }
            }
        )
    doc = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "target": {"kind": "HTTPRoute", "name": ROUTE},
            "baseline": {
                "modelName": BASELINE_MODEL,
                "backendRef": {"name": BASELINE_MODEL, "port": SERVICE_PORT},
            },
            "candidate": {
                "modelName": CANDIDATE_MODEL,
                "backendRef": {"name": CANDIDATE_MODEL, "port": SERVICE_PORT},
                "fineTuneJob": job,
            },
            "steps": steps,
            "progressDeadlineSeconds": 300,
            "analysis": analysis_spec(settings, prometheus_url),
        },
    }
    return as_manifest(ModelRollout.model_validate(doc))


# -- Kubernetes objects of the serving side ------------------------------------------------------
def route_manifest(namespace: str) -> dict[str, Any]:
    """The serving route: all traffic to the baseline, the candidate listed at weight 0."""
    return {
        "apiVersion": f"{GATEWAY_GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": ROUTE, "namespace": namespace},
        "spec": {
            "parentRefs": [{"name": "canary-gateway"}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
                    "backendRefs": [
                        {"name": BASELINE_MODEL, "port": SERVICE_PORT, "weight": 100},
                        {"name": CANDIDATE_MODEL, "port": SERVICE_PORT, "weight": 0},
                    ],
                }
            ],
        },
    }


def route_weights(route: Mapping[str, Any]) -> dict[str, int]:
    """Backend name -> weight in rule 0 (the default weight of a listed ref is 1)."""
    rules = (route.get("spec") or {}).get("rules") or []
    refs = rules[0].get("backendRefs") or [] if rules else []
    return {str(r["name"]): int(r.get("weight", 1)) for r in refs}


# -- the candidate's FineTuneJob (KWOK) ----------------------------------------------------------
def job_manifest(name: str, namespace: str) -> dict[str, Any]:
    """A one-pod LoRA job whose fake pods the lab finishes (never really trained)."""
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "method": "lora",
            "model": {"uri": "/models/tiny-llama"},
            "dataset": {"train": "/data/train.jsonl", "eval": "/data/eval.jsonl", "format": "chat"},
            "hyperparameters": {"globalBatchSize": 8, "microBatchSize": 2, "learningRate": 2e-4},
            "resources": {"nodes": 1, "gpusPerNode": 1, "cpu": "2", "memory": "8Gi"},
            "output": {
                "uri": f"s3://results/{name}",
                "credentialsSecretRef": {"name": "canary-s3"},
            },
            "runPolicy": {"backoffLimit": 1, "schedulingTimeoutSeconds": 30},
            "evaluation": {
                "gates": [{"metric": "heldOut/loss", "noWorseThanBaseline": {"tolerance": 0.05}}]
            },
        },
    }


def passed_evaluation_message() -> str:
    """Rank 0's termination message: training done, evaluation gates passed."""
    from kubetune.contract.evaluation import (
        EvaluationSummary,
        GateSummary,
        MetricSummary,
        termination_message,
    )

    summary = EvaluationSummary(
        verdict="Passed",
        baseline="base",
        confidence=0.95,
        metrics=[
            MetricSummary(name="heldOut/loss", baseline=6.3, tuned=6.1, delta=-0.2, samples=40)
        ],
        gates=[GateSummary(metric="heldOut/loss", rule="noWorseThanBaseline", passed=True)],
    )
    return termination_message("training finished: 4 steps; evaluation Passed", summary)


# -- the models --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CanaryModels:
    """The tiny base model and the LoRA adapter trained on it."""

    base: Path
    adapter: Path


# -- model servers -----------------------------------------------------------------------------
@dataclass
class ServerProcess:
    """One ``kubetune serve`` process."""

    model_name: str
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    info: ProcInfo

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.address}/health", timeout=2) as resp:
                return int(resp.status) == 200
        except OSError:
            return False


def start_server(
    model_name: str,
    models: CanaryModels,
    log_dir: Path,
    *,
    adapter: bool,
    faults: Faults,
    seed: int,
    threads: int,
) -> ServerProcess:
    host = host_ipv4()  # the API server refuses loopback EndpointSlice addresses
    port = free_port(host)
    argv = [
        sys.executable,
        "-m",
        "kubetune.cli.main",
        "serve",
        str(models.base),
        "--served-model-name",
        model_name,
        "--host",
        host,
        "--port",
        str(port),
        "--threads",
        str(threads),
        *(["--adapter", str(models.adapter)] if adapter else []),
        *faults.argv(seed),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc, info = spawn(
        f"serve-{model_name}",
        argv,
        log_dir / f"serve-{model_name}.log",
        env=env,
        die_with_parent=True,
    )
    return ServerProcess(model_name, host, port, proc, info)


# -- timeline ----------------------------------------------------------------------------------
def timeline_queries(models: tuple[str, ...], window: str = "10s") -> dict[str, str]:
    """PromQL per timeline signal, each ``by (model_name)`` for both models at once."""
    names = "|".join(models)  # plain DNS names: nothing to escape
    sel = f'model_name=~"{names}"'
    ok = f"sum by (model_name) (rate(vllm:request_success_total{{{sel}}}[{window}]))"
    err = f"sum by (model_name) (rate(kubetune_serve_request_errors_total{{{sel}}}[{window}]))"
    return {
        "p95_latency_s": "histogram_quantile(0.95, sum by (model_name, le) (rate("
        f"vllm:e2e_request_latency_seconds_bucket{{{sel}}}[{window}])))",
        "error_rate": f"{err} / ({err} + {ok})",
        "requests_per_s": f"{err} + {ok}",
        "positive_share": "sum by (model_name) "
        f'(kubetune_serve_feedback_total{{{sel},rating="positive"}})'
        f" / sum by (model_name) (kubetune_serve_feedback_total{{{sel}}})",
    }


def _finite(value: str) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def sample_metrics(api: PrometheusAPI, queries: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """model name -> {signal: value or None} (None: no data, NaN or a failed query)."""
    out: dict[str, dict[str, Any]] = {}
    for signal, expr in queries.items():
        try:
            result = api.query(expr)
        except (OSError, DevClusterError):
            continue
        for sample in result:
            model = sample["metric"].get("model_name")
            if model:
                out.setdefault(model, {})[signal] = _finite(sample["value"][1])
    return out


def _ts(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


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
        at = _ts(m.get("time"))
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
        result.first_failure_at = _ts(abort["time"])  # a sequential Worse is recorded here
    if result.fault_visible_at is None:
        result.fault_visible_at = result.first_failure_at


# -- the lab ----------------------------------------------------------------------------------
class _RouteWatch:
    """Timestamps every change of the route's weights (a watch, so to the millisecond)."""

    def __init__(self, api: Any, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.changes: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="route-watch")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        from kubernetes import watch

        last: dict[str, int] | None = None
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(
                    self.api.list_namespaced_custom_object,
                    GATEWAY_GROUP,
                    "v1",
                    self.namespace,
                    "httproutes",
                    field_selector=f"metadata.name={ROUTE}",
                    timeout_seconds=5,
                ):
                    weights = route_weights(event["object"])
                    if weights != last:
                        last = weights
                        self.changes.append({"time": time.time(), "weights": weights})
                    if self._stop.is_set():
                        w.stop()
            except Exception:  # a broken watch is re-opened; the poll in the lab covers gaps
                time.sleep(0.5)


class _Load:
    """The load generator on an event loop of its own, cancellable at any moment."""

    def __init__(self, url: str, settings: LabSettings, seed: int) -> None:
        self.url = url
        self.settings = settings
        self.seed = seed
        self.counts: dict[str, dict[str, int]] = {}
        self.errors: dict[str, int] = {}
        self.loop = asyncio.new_event_loop()
        self._task: asyncio.Task[Any] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="canary-load")

    def _on_response(self, record: Any) -> None:
        if record.model is None:
            key = str(record.error or record.status)
            self.errors[key] = self.errors.get(key, 0) + 1
            return
        c = self.counts.setdefault(record.model, {"responses": 0, "positive": 0, "negative": 0})
        c["responses"] += 1
        if record.rating in ("positive", "negative"):
            c[record.rating] += 1

    def start(self) -> None:
        from kubetune.devcluster.loadgen import run_load

        s = self.settings
        # created before the loop runs, so stop() can always cancel it
        self._task = self.loop.create_task(
            run_load(
                self.url,
                s.rate,
                s.timeout_s + 60,
                concurrency=s.concurrency,
                max_tokens=s.max_tokens,
                satisfied_rate=s.satisfied_rate,
                seed=self.seed,
                timeout_s=30,
                on_response=self._on_response,
            )
        )
        self._thread.start()

    def _run(self) -> None:
        assert self._task is not None
        asyncio.set_event_loop(self.loop)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            self.loop.run_until_complete(self._task)
        pending = asyncio.all_tasks(self.loop)  # requests in flight when cancelled
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.run_until_complete(asyncio.sleep(0.25))  # aiohttp closes its connections
        self.loop.close()

    def stop(self) -> dict[str, Any]:
        if self._task is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(30)
        return {"models": self.counts, "errors": self.errors}


class CanaryLab:
    """Runs :class:`Scenario` s against a running cluster, operator and Prometheus.

    ``kubeconfig`` needs rights to create Services, EndpointSlices, HTTPRoutes, FineTuneJobs,
    ModelRollouts and to annotate pods in ``namespace``; ``prometheus_url`` and
    ``file_sd_dir`` are the Prometheus the analysis queries and the directory it discovers
    targets in (the ``kubetune-serve`` pool reads ``<file_sd_dir>/serve/``).
    """

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        prometheus_url: str,
        file_sd_dir: Path,
        workdir: Path,
        models: CanaryModels,
        settings: LabSettings | None = None,
        *,
        kubectl: Path | None = None,
        log: Log | None = None,
        on_sample: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.prometheus = PrometheusAPI(prometheus_url)
        self.prometheus_url = prometheus_url
        self.serve_sd_dir = file_sd_dir / SERVE_SD_SUBDIR
        self.workdir = workdir
        self.models = models
        self.settings = settings or LabSettings()
        self.kubectl_path = kubectl
        self.log = log or (lambda _m: None)
        self.on_sample = on_sample

    # -- small helpers
    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        proc = run_kubectl(
            [*args, "-n", self.namespace],
            kubeconfig=self.kubeconfig,
            kubectl=self.kubectl_path,
            input=input,
            check=check,
        )
        return proc.stdout

    def apply(self, *docs: Mapping[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([dict(d) for d in docs]))

    def _custom_api(self) -> Any:
        from kubernetes import client, config

        api_client = config.new_client_from_config(config_file=str(self.kubeconfig))
        return client.CustomObjectsApi(api_client)

    # -- setup
    def _start_servers(self, scenario: Scenario, seed: int) -> list[ServerProcess]:
        s = self.settings
        common = {"seed": seed, "threads": s.threads_per_server}
        servers = [
            start_server(
                BASELINE_MODEL, self.models, self.workdir, adapter=False, faults=Faults(), **common
            ),
            start_server(
                CANDIDATE_MODEL,
                self.models,
                self.workdir,
                adapter=scenario.faults == Faults(),
                faults=scenario.faults,
                **common,
            ),
        ]
        deadline = time.monotonic() + 180
        while not all(srv.healthy() for srv in servers):
            dead = [srv for srv in servers if srv.proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                terminate(
                    [srv.info for srv in servers], {srv.proc.pid: srv.proc for srv in servers}
                )
                log = Path(dead[0].info.log if dead else servers[0].info.log)
                raise DevClusterError(f"model server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        return servers

    def _register(self, servers: list[ServerProcess]) -> list[Path]:
        files = [
            write_target(
                self.serve_sd_dir,
                f"{self.namespace}-{srv.model_name}",
                srv.address,
                {"namespace": self.namespace, "model_server": srv.model_name},
            )
            for srv in servers
        ]
        instances = "|".join(srv.address for srv in servers)
        deadline = time.monotonic() + 60
        expr = f'count(up{{job="kubetune-serve",instance=~"{instances}"}} == 1)'
        while True:
            result = self.prometheus.query(expr)
            if result and int(float(result[0]["value"][1])) == len(servers):
                return files
            if time.monotonic() > deadline:
                raise DevClusterError(f"Prometheus does not scrape the model servers ({expr})")
            time.sleep(0.5)

    def _succeed_job(self, name: str) -> None:
        """Create the candidate's FineTuneJob and play its pods to a Promotable success."""
        from kubetune.devcluster import simulate

        self.kubectl(
            "create",
            "secret",
            "generic",
            "canary-s3",
            "--from-literal=AWS_ACCESS_KEY_ID=lab",
            "--from-literal=AWS_SECRET_ACCESS_KEY=lab",
            check=False,
        )
        self.apply(job_manifest(name, self.namespace))
        selector = f"kubetune.io/job-name={name}"
        finished: set[str] = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = json.loads(self.kubectl("get", "finetunejob", name, "-o", "json"))
            status = job.get("status") or {}
            promotable: dict[str, Any] = next(
                (c for c in status.get("conditions", []) if c.get("type") == "Promotable"), {}
            )
            if status.get("phase") == "Succeeded" and promotable.get("status") == "True":
                return
            if status.get("phase") in ("Failed",) or promotable.get("status") == "False":
                raise DevClusterError(f"the candidate's job did not become promotable: {status}")
            pods = json.loads(self.kubectl("get", "pods", "-l", selector, "-o", "json"))["items"]
            for pod in pods:
                meta = pod["metadata"]
                labels = meta.get("labels") or {}
                running = (pod.get("status") or {}).get("phase") == "Running"
                if meta["name"] in finished or not running:
                    continue
                rank0 = labels.get("kubetune.io/rank") == "0"
                worker = labels.get("kubetune.io/role") == "worker"
                simulate.finish_pod(
                    meta["name"],
                    self.namespace,
                    0,
                    message=passed_evaluation_message() if worker and rank0 else None,
                    wait=False,
                    kubeconfig=self.kubeconfig,
                    kubectl=self.kubectl_path,
                )
                finished.add(meta["name"])
            time.sleep(0.5)
        raise DevClusterError(f"the candidate's job {name} did not succeed within 120 s")

    # -- the run
    def run(self, scenario: Scenario, seed: int = 0) -> CanaryResult:
        """One rollout of ``scenario`` from scratch; everything started is stopped again."""
        s = self.settings
        self.workdir.mkdir(parents=True, exist_ok=True)
        started = time.time()
        self.log(f"[{scenario.name}] starting the model servers")
        servers = self._start_servers(scenario, seed)
        targets: list[Path] = []
        router: Any = None
        load: _Load | None = None
        watch: _RouteWatch | None = None
        try:
            targets = self._register(servers)
            docs: list[dict[str, Any]] = []
            for srv in servers:
                docs += local_backend_manifests(
                    srv.model_name, self.namespace, srv.host, srv.port, service_port=SERVICE_PORT
                )
            self.apply(*docs, route_manifest(self.namespace))
            router = self._start_router()
            self.log(f"[{scenario.name}] router on {router.router.url}; candidate job")
            self._succeed_job(CANDIDATE_JOB)
            api = self._custom_api()
            watch = _RouteWatch(api, self.namespace)
            watch.start()
            if scenario.traffic:
                load = _Load(router.router.url, s, seed)
                load.start()
            self.apply(
                rollout_manifest(ROUTE, self.namespace, s, self.prometheus_url, job=CANDIDATE_JOB)
            )
            self.log(f"[{scenario.name}] rollout created")
            result = self._follow(scenario, seed, started, api)
        finally:
            load_report = load.stop() if load is not None else {}
            if watch is not None:
                watch.stop()
            if router is not None:
                router.stop()
            for path in targets:
                path.unlink(missing_ok=True)
            terminate([srv.info for srv in servers], {srv.proc.pid: srv.proc for srv in servers})
        result.load = load_report
        result.route_changes = list(watch.changes) if watch is not None else []
        self._finish(result, scenario)
        return result

    def _start_router(self) -> Any:
        from kubetune.devcluster.router import RouterThread, WeightedRouter

        thread = RouterThread(
            lambda: WeightedRouter(
                self.namespace, ROUTE, kubeconfig=self.kubeconfig, upstream_timeout=30
            )
        )
        thread.start()
        return thread

    def _follow(self, scenario: Scenario, seed: int, started: float, api: Any) -> CanaryResult:
        s = self.settings
        queries = timeline_queries((BASELINE_MODEL, CANDIDATE_MODEL))
        result = CanaryResult(
            scenario.name, scenario.expected, seed, "Timeout", s.interval_seconds, started, 0.0
        )
        deadline = time.monotonic() + s.timeout_s
        end_at: float | None = None  # when the loop stops, once an outcome is known
        last_step: int | None = None
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            tick = time.monotonic()
            try:
                rollout = api.get_namespaced_custom_object(
                    "kubetune.io", "v1alpha1", self.namespace, "modelrollouts", ROUTE
                )
                route = api.get_namespaced_custom_object(
                    GATEWAY_GROUP, "v1", self.namespace, "httproutes", ROUTE
                )
            except Exception as exc:  # a slow API server: the next tick tries again
                self.log(f"[{scenario.name}] reading the rollout failed: {exc!r}")
                time.sleep(1.0)
                continue
            status = rollout.get("status") or {}
            weights = route_weights(route)
            step = int(status.get("currentStep", 0))
            now = time.time()
            if step != last_step:
                result.step_changes.append({"time": now, "step": step})
                last_step = step
            sample = {
                "time": now,
                "t": round(now - started, 3),
                "phase": status.get("phase"),
                "step": step,
                "pause_reason": status.get("pauseReason"),
                "candidate_weight": weights.get(CANDIDATE_MODEL, 0),
                "baseline_weight": weights.get(BASELINE_MODEL, 0),
                "status_weight": status.get("candidateWeight"),
                "metrics": sample_metrics(self.prometheus, queries),
                "last_measurements": _latest_measurements(status),
            }
            result.timeline.append(sample)
            result.max_weight = max(result.max_weight, weights.get(CANDIDATE_MODEL, 0))
            if self.on_sample is not None:
                self.on_sample(sample)
            phase = status.get("phase")
            if phase in ("Promoted", "RolledBack", "Failed"):
                result.outcome = phase
                # 2 s more of the picture (sooner than an Inconclusive pause's settle time)
                end_at = min(end_at or math.inf, time.monotonic() + 2.0)
            elif phase == "Paused" and status.get("pauseReason") == "AnalysisInconclusive":
                result.outcome = "Inconclusive"
                if end_at is None:  # keep watching: it must never promote by itself
                    end_at = time.monotonic() + s.settle_intervals * s.interval_seconds
            if end_at is not None and time.monotonic() >= end_at:
                break
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        result.finished_at = time.time()
        result.phase = status.get("phase")
        result.pause_reason = status.get("pauseReason")
        result.abort = status.get("abort")
        result.traffic_started_at = _ts(status.get("trafficStartedAt"))
        result.measurements = list(status.get("measurements") or [])
        return result

    def _finish(self, result: CanaryResult, scenario: Scenario) -> None:
        for change in result.route_changes:  # the watch sees weights the 1 s timeline may miss
            result.max_weight = max(result.max_weight, change["weights"].get(CANDIDATE_MODEL, 0))
        result.weight_zero_at = weight_zero_time(result.route_changes)
        mins = {
            "p95-latency": self.settings.min_samples,
            "error-rate": self.settings.min_samples,
            "positive-feedback": self.settings.feedback_min_samples,
        }
        summarize_detection(result, scenario.fault_metric, mins)
        self.log(
            f"[{scenario.name}] outcome {result.outcome} (expected {result.expected}) after "
            f"{result.finished_at - result.started_at:.0f} s; detect {result.detect_s}, "
            f"react {result.react_s}, exposure {result.exposure_s}; abort {result.abort}; "
            f"load {result.load}"
        )


def _latest_measurements(status: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The newest measurement of each metric (for the live display)."""
    latest: dict[str, dict[str, Any]] = {}
    for m in status.get("measurements") or []:
        latest[str(m.get("metric"))] = {
            k: m.get(k) for k in ("verdict", "candidate", "baseline", "limit", "weight", "time")
        }
    return latest


def write_result(result: CanaryResult, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(), indent=2, default=str))
    return path


def apply_crd(crd: Mapping[str, Any], kubeconfig: Path, kubectl: Path | None = None) -> None:
    """Server-side apply a CRD and wait until it is Established."""
    run_kubectl(
        ["apply", "--server-side", "--force-conflicts", "-f", "-"],
        kubeconfig=kubeconfig,
        kubectl=kubectl,
        input=yaml.safe_dump(dict(crd)),
    )
    name = crd["metadata"]["name"]
    deadline = time.monotonic() + 60
    while True:  # kubectl wait fails at once while a new CRD has no conditions yet
        proc = run_kubectl(
            ["wait", "--for=condition=Established", f"crd/{name}", "--timeout=30s"],
            kubeconfig=kubeconfig,
            kubectl=kubectl,
            check=False,
        )
        if proc.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise DevClusterError(f"CRD {name} not Established: {proc.stderr}")
        time.sleep(0.5)


def ensure_rollout_crd(kubeconfig: Path, kubectl: Path | None = None) -> None:
    """Install the ModelRollout CRD: the operator switches its rollout controller on only
    when the API is served at its start."""
    from kubetune.api.crd import rollout_definition

    apply_crd(rollout_definition(), kubeconfig, kubectl)


def ensure_crds(kubeconfig: Path, kubectl: Path | None = None) -> None:
    """Install the FineTuneJob and ModelRollout CRDs (the demo and the benchmark)."""
    from kubetune.api.crd import custom_resource_definition

    apply_crd(custom_resource_definition(), kubeconfig, kubectl)
    ensure_rollout_crd(kubeconfig, kubectl)


@contextlib.contextmanager
def operator_process(
    kubeconfig: Path, log: Path, env: Mapping[str, str] | None = None
) -> Iterator[ProcInfo]:
    """``kubetune operator run`` (leader election on, its own lease) until the block ends;
    yields once it leads. For the demo and the benchmark (tests run their own)."""
    lease_namespace = (env or {}).get("KUBETUNE_OPERATOR_LEASE_NAMESPACE", "kubetune-system")
    namespace = yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace",
                                "metadata": {"name": lease_namespace}})  # fmt: skip
    run_kubectl(["apply", "-f", "-"], kubeconfig=kubeconfig, input=namespace)
    port = free_port()
    environ = dict(os.environ, KUBETUNE_OPERATOR_TERMINATION_GRACE_PERIOD_SECONDS="5")
    environ["KUBETUNE_OPERATOR_LEASE_NAMESPACE"] = lease_namespace
    environ.update(env or {})
    environ.pop("KUBECONFIG", None)
    argv = [sys.executable, "-m", "kubetune.cli.main", "operator", "run"]
    argv += ["--kubeconfig", str(kubeconfig), "--metrics-port", str(port), "--id", "canary-lab"]
    proc, info = spawn("operator", argv, log, env=environ, die_with_parent=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(OSError):
                url = f"http://127.0.0.1:{port}/metrics"
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if "kubetune_operator_leader 1.0" in resp.read().decode():
                        break
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise DevClusterError(f"the operator did not start leading ({log}):\n{tail}")
            time.sleep(0.5)
        yield info
    finally:
        terminate([info], {proc.pid: proc}, timeout=30)
