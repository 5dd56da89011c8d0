"""The lab: one scenario, end to end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from kubetune.devcluster.canary.manifests import (
    job_manifest,
    passed_evaluation_message,
    route_manifest,
    route_weights,
)
from kubetune.devcluster.canary.result import CanaryResult, summarize_detection, weight_zero_time
from kubetune.devcluster.canary.scenarios import (
    BASELINE_MODEL,
    CANDIDATE_JOB,
    CANDIDATE_MODEL,
    GATEWAY_GROUP,
    ROUTE,
    SERVICE_PORT,
    Faults,
    LabSettings,
    Log,
    Scenario,
    rollout_manifest,
)
from kubetune.devcluster.canary.servers import CanaryModels, ServerProcess, start_server
from kubetune.devcluster.canary.timeline import sample_metrics, timeline_queries, timestamp_of
from kubetune.devcluster.cluster import run_kubectl
from kubetune.devcluster.procs import terminate
from kubetune.devcluster.prometheus import SERVE_SD_SUBDIR, PrometheusAPI, write_target
from kubetune.devcluster.router import local_backend_manifests
from kubetune.devcluster.versions import DevClusterError


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
        result.traffic_started_at = timestamp_of(status.get("trafficStartedAt"))
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
