"""A real Prometheus for the development tooling: ``kubetune dev prometheus up|down|status``.

The binary is built from source and cached like the cluster's (component ``prometheus`` in
``data/versions.env``). Everything it needs lives in one directory (default: beside the dev
cluster's state directory, never inside it, because ``kubetune dev cluster down`` removes that)::

    <dir>/prometheus.yml    generated from :class:`ScrapeSettings` (rewritten by every ``up``)
    <dir>/data/             the TSDB
    <dir>/file_sd/*.json    file-discovered targets: ``kubetune run --local`` registers its
                            rank-0 metrics endpoint here while it runs
    <dir>/state.json        pid, port and URL of the running server
    <dir>/prometheus.log

Scrape jobs (the ``job`` label every rule and dashboard selects on):

* ``kubetune-operator``: static targets (the operator's ``--metrics-port``).
* ``kubetune-trainer``: the dev cluster's rank-0 worker pods, found with ``kubernetes_sd_configs``
  (role pod, the cluster's kubeconfig), on their container port named ``metrics``; plus the local
  runs in ``file_sd/``. Both carry ``namespace`` and ``finetunejob`` target labels (the pod's
  namespace and job; ``local`` and the job name for a local run).
* ``kubetune-serve``: local model servers (``kubetune serve``, the canary lab) registered in
  ``file_sd/serve/``.

Only the standard library and PyYAML here: the CLI imports this in the operator image too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubetune.contract.metrics import OPERATOR_SCRAPE_JOB, TRAINER_SCRAPE_JOB
from kubetune.devcluster.procs import ProcInfo, free_port, spawn, terminate
from kubetune.devcluster.versions import Binaries, DevClusterError

# the scrape job names every rule and dashboard selects on: the metrics contract owns them
OPERATOR_JOB = OPERATOR_SCRAPE_JOB
TRAINER_JOB = TRAINER_SCRAPE_JOB
#: the scrape pool of local runs (file_sd); its targets are relabeled to ``job=TRAINER_JOB``
TRAINER_LOCAL_POOL = "kubetune-trainer-local"
#: namespace label of ``kubetune run --local`` targets
LOCAL_NAMESPACE = "local"
#: the scrape pool (and ``job``) of local model servers (``kubetune serve``), discovered in
#: ``<file_sd_dir>/serve/*.json`` -- apart from the trainers, whose rules select on ``job``
SERVE_JOB = "kubetune-serve"
SERVE_SD_SUBDIR = "serve"

#: where ``kubetune run --local`` registers its metrics endpoint (a file_sd directory)
FILE_SD_ENV = "KUBETUNE_PROMETHEUS_FILE_SD_DIR"
#: comma-separated ``host:port`` metrics addresses of operators to scrape
OPERATOR_TARGETS_ENV = "KUBETUNE_PROMETHEUS_OPERATOR_TARGETS"
DIR_ENV = "KUBETUNE_PROMETHEUS_DIR"

#: what ``kubetune operator run`` listens on by default (operator settings ``metrics_port``)
DEFAULT_OPERATOR_TARGET = "127.0.0.1:8080"
DEFAULT_SCRAPE_INTERVAL = "15s"
DEFAULT_PORT = 9090

# The operator's pod labels and port name (operator/kubetune_operator/naming.py and
# render/pods.py; the dev cluster may not import the operator -- a unit test keeps them equal).
POD_JOB_LABEL = "kubetune.io/job-name"
#: the full job name, on pods whose label had to be shortened (names over 63 characters)
POD_JOB_ANNOTATION = "kubetune.io/job-name"
POD_ROLE_LABEL = "kubetune.io/role"
POD_RANK_LABEL = "kubetune.io/rank"
METRICS_PORT_NAME = "metrics"

_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def _meta(kind: str, key: str) -> str:
    """Prometheus' meta label for a pod label or annotation key (non-alphanumerics -> ``_``)."""
    return f"__meta_kubernetes_pod_{kind}_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


def default_dir() -> Path:
    """``$KUBETUNE_PROMETHEUS_DIR``, else ``<dev cluster state dir>-prometheus``."""
    env = os.environ.get(DIR_ENV)
    if env:
        return Path(env)
    from kubetune.devcluster.cluster import default_state_dir

    state = default_state_dir().absolute()
    return state.with_name(state.name + "-prometheus")


@dataclass(frozen=True)
class ScrapeSettings:
    """What the generated ``prometheus.yml`` scrapes and how often."""

    #: where local runs register themselves (``<dir>/file_sd`` for a :class:`PrometheusServer`)
    file_sd_dir: Path
    operator_targets: Sequence[str] = (DEFAULT_OPERATOR_TARGET,)
    #: a kubeconfig to discover the trainer pods with; None: no Kubernetes discovery
    kubeconfig: Path | None = None
    scrape_interval: str = DEFAULT_SCRAPE_INTERVAL
    #: rule files to load (alert rules evaluated by this Prometheus)
    rule_files: Sequence[Path] = ()
    #: how often rules are evaluated (default: the scrape interval)
    evaluation_interval: str | None = None

    def __post_init__(self) -> None:
        for value in (self.scrape_interval, self.evaluation_interval):
            if value is not None and not _DURATION.match(value):
                raise DevClusterError(f"not a Prometheus duration: {value!r} (e.g. 15s, 1m)")


def render_config(settings: ScrapeSettings) -> dict[str, Any]:
    """The Prometheus configuration (a dict, dumped as YAML) for ``settings``."""
    interval = settings.scrape_interval
    # a scrape may take at most the interval; Prometheus refuses a timeout above it
    timing = {"scrape_interval": interval, "scrape_timeout": interval}
    operator: dict[str, Any] = {
        "job_name": OPERATOR_JOB,
        **timing,
        "static_configs": [{"targets": list(settings.operator_targets)}],
    }
    local: dict[str, Any] = {
        "job_name": TRAINER_LOCAL_POOL,
        **timing,
        "file_sd_configs": [
            {"files": [str(settings.file_sd_dir / "*.json")], "refresh_interval": interval}
        ],
        # one trainer job for rules and dashboards, wherever the trainer runs
        "relabel_configs": [{"target_label": "job", "replacement": TRAINER_JOB}],
    }
    serve: dict[str, Any] = {
        "job_name": SERVE_JOB,
        **timing,
        "file_sd_configs": [
            {
                "files": [str(settings.file_sd_dir / SERVE_SD_SUBDIR / "*.json")],
                "refresh_interval": interval,
            }
        ],
    }
    jobs = [operator, local, serve]
    if settings.kubeconfig is not None:
        jobs.insert(1, _trainer_pods_job(settings.kubeconfig, timing))
    return {
        "global": {
            **timing,
            "evaluation_interval": settings.evaluation_interval or interval,
        },
        "rule_files": [str(p) for p in settings.rule_files],
        "scrape_configs": jobs,
    }


def _trainer_pods_job(kubeconfig: Path, timing: Mapping[str, str]) -> dict[str, Any]:
    """Rank 0 of every gang (only rank 0 serves /metrics), on its ``metrics`` port."""
    return {
        "job_name": TRAINER_JOB,
        **timing,
        "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(kubeconfig)}],
        "relabel_configs": [
            {
                "action": "keep",
                "source_labels": [
                    _meta("labelpresent", POD_JOB_LABEL),
                    _meta("label", POD_ROLE_LABEL),
                    _meta("label", POD_RANK_LABEL),
                    "__meta_kubernetes_pod_container_port_name",
                ],
                "regex": f"true;worker;0;{METRICS_PORT_NAME}",
            },
            {  # a finished pod serves nothing; it would only read as a failed scrape
                "action": "drop",
                "source_labels": ["__meta_kubernetes_pod_phase"],
                "regex": "Succeeded|Failed",
            },
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {  # the full name (annotation on long names), else the label
                "source_labels": [
                    _meta("annotation", POD_JOB_ANNOTATION),
                    _meta("label", POD_JOB_LABEL),
                ],
                "regex": "([^;]+);.*|;(.*)",
                "replacement": "$1$2",
                "target_label": "finetunejob",
            },
        ],
    }


# -- local runs (file_sd) ------------------------------------------------------------------------
def _target_file(file_sd_dir: Path, job_name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", job_name)
    return file_sd_dir / f"{LOCAL_NAMESPACE}-{safe}.json"


def write_target(
    file_sd_dir: Path, name: str, address: str, labels: Mapping[str, str] | None = None
) -> Path:
    """Write a file_sd target file atomically (Prometheus watches the directory and must never
    read half a file); returns its path."""
    file_sd_dir.mkdir(parents=True, exist_ok=True)
    path = _target_file(file_sd_dir, name)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # not matched by *.json
    tmp.write_text(json.dumps([{"targets": [address], "labels": dict(labels or {})}], indent=2))
    tmp.replace(path)
    return path


@contextlib.contextmanager
def local_run_target(file_sd_dir: Path, job_name: str, address: str) -> Iterator[Path]:
    """Register a ``kubetune run --local`` metrics endpoint while the block runs."""
    path = write_target(
        file_sd_dir, job_name, address, {"namespace": LOCAL_NAMESPACE, "finetunejob": job_name}
    )
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


# -- HTTP API ------------------------------------------------------------------------------------
class PromQLError(DevClusterError):
    """The HTTP API answered with an error (a bad expression, a timeout)."""

    def __init__(self, message: str, error_type: str = "") -> None:
        super().__init__(message)
        self.error_type = error_type


@dataclass(frozen=True)
class PrometheusAPI:
    """The few HTTP API calls the tooling and the tests use (``/api/v1``)."""

    url: str
    timeout: float = 10.0

    def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=self.timeout) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400/422/503 carry the API's error document
            try:
                body = json.loads(exc.read())
            except ValueError:
                raise PromQLError(f"{path}: HTTP {exc.code}") from exc
        if body.get("status") != "success":
            raise PromQLError(
                f"{path} {dict(params or {})}: {body.get('errorType')}: {body.get('error')}",
                str(body.get("errorType", "")),
            )
        return body["data"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return int(resp.status) == 200
        except (OSError, ValueError):
            return False

    def query_data(self, expr: str, time: float | None = None) -> dict[str, Any]:
        """An instant query's ``data``: ``resultType`` (vector, scalar...) and ``result``."""
        params: dict[str, Any] = {"query": expr}
        if time is not None:
            params["time"] = time
        return dict(self._get("/api/v1/query", params))

    def query(self, expr: str, time: float | None = None) -> list[dict[str, Any]]:
        """An instant query: the result list (vector samples ``{"metric", "value"}``)."""
        return list(self.query_data(expr, time)["result"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """A range query: the series (``{"metric", "values"}``), ``step`` in seconds."""
        params = {"query": expr, "start": start, "end": end, "step": step}
        return list(self._get("/api/v1/query_range", params)["result"])

    def targets(self) -> list[dict[str, Any]]:
        """The active targets (``labels``, ``health``, ``lastError``, ``scrapePool``)."""
        return list(self._get("/api/v1/targets", {"state": "active"})["activeTargets"])

    def rules(self) -> list[dict[str, Any]]:
        """The loaded rule groups (each rule with ``health`` and ``lastError``)."""
        return list(self._get("/api/v1/rules")["groups"])

    def reload(self) -> None:
        """Re-read the configuration (needs ``--web.enable-lifecycle``, which :meth:`up` sets)."""
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            resp.read()


# -- the server ----------------------------------------------------------------------------------
@dataclass
class PrometheusState:
    """What ``state.json`` records about a running server."""

    url: str
    port: int
    process: ProcInfo
    version: str
    started_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "port": self.port,
            "process": self.process.to_json(),
            "version": self.version,
            "started_at": self.started_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PrometheusState:
        return cls(
            url=data["url"],
            port=int(data["port"]),
            process=ProcInfo.from_json(data["process"]),
            version=data["version"],
            started_at=float(data["started_at"]),
        )


class PrometheusServer:
    """One Prometheus process rooted at ``directory`` (see the module docstring)."""

    def __init__(self, directory: Path | None = None, binaries: Binaries | None = None) -> None:
        self.dir = (directory or default_dir()).absolute()
        self.binaries = binaries or Binaries.default()

    @property
    def config_file(self) -> Path:
        return self.dir / "prometheus.yml"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def file_sd_dir(self) -> Path:
        return self.dir / "file_sd"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def log_file(self) -> Path:
        return self.dir / "prometheus.log"

    def settings(self, **kwargs: Any) -> ScrapeSettings:
        """:class:`ScrapeSettings` discovering local runs in this server's ``file_sd/``."""
        return ScrapeSettings(file_sd_dir=self.file_sd_dir, **kwargs)

    def load_state(self) -> PrometheusState | None:
        try:
            return PrometheusState.from_json(json.loads(self.state_file.read_text()))
        except (OSError, ValueError, KeyError):
            return None

    def running(self) -> PrometheusState | None:
        """The state of the live server in this directory, or None."""
        state = self.load_state()
        return state if state is not None and state.process.alive() else None

    def write_config(self, settings: ScrapeSettings) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.file_sd_dir.mkdir(exist_ok=True)
        tmp = self.config_file.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(render_config(settings), sort_keys=False))
        tmp.replace(self.config_file)
        return self.config_file

    def up(
        self,
        settings: ScrapeSettings,
        *,
        port: int = 0,
        retention: str = "7d",
        die_with_parent: bool = False,
        timeout: float = 60.0,
    ) -> PrometheusState:
        """Write the configuration and start Prometheus (``port`` 0: a free one); wait until
        ``/-/ready``. A server already running here re-reads the new configuration instead."""
        binary = self.binaries.path("prometheus")
        if not os.access(binary, os.X_OK):
            raise DevClusterError(
                f"{binary} is not built: run `kubetune dev cluster build prometheus`"
            )
        self.write_config(settings)
        state = self.running()
        if state is not None:
            PrometheusAPI(state.url).reload()
            return state
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [
            str(binary),
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--storage.tsdb.retention.time={retention}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ]
        proc, info = spawn(
            "prometheus", argv, self.log_file, cwd=self.dir, die_with_parent=die_with_parent
        )
        state = PrometheusState(url, port, info, self.binaries.versions.prometheus_release)
        api = PrometheusAPI(url)
        deadline = time.monotonic() + timeout
        while not api.ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                terminate([info], {proc.pid: proc})
                raise DevClusterError(
                    f"prometheus did not become ready on {url}; its log:\n{self.log_tail()}"
                )
            time.sleep(0.1)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state.to_json(), indent=2))
        tmp.replace(self.state_file)
        return state

    def down(self, *, purge: bool = False) -> bool:
        """Stop the server (SIGTERM: it flushes its head block); ``purge`` removes the
        directory too. Returns False when the process could not be stopped."""
        state = self.load_state()
        stuck = terminate([state.process], timeout=30) if state else []
        if stuck:
            return False
        self.state_file.unlink(missing_ok=True)
        if purge and self.dir.exists():
            import shutil

            shutil.rmtree(self.dir)
        return True

    def status(self) -> dict[str, Any]:
        """Running or not, URL, and per scrape job how many targets are up."""
        state = self.running()
        out: dict[str, Any] = {"running": state is not None, "dir": str(self.dir)}
        if state is None:
            return out
        out.update(url=state.url, pid=state.process.pid, version=state.version)
        jobs: dict[str, dict[str, int]] = {}
        try:
            for target in PrometheusAPI(state.url).targets():
                job = target["labels"].get("job", target.get("scrapePool", "?"))
                counts = jobs.setdefault(job, {"up": 0, "down": 0, "unknown": 0})
                counts[target.get("health", "unknown")] = (
                    counts.get(target.get("health", "unknown"), 0) + 1
                )
        except (OSError, DevClusterError) as exc:
            out["error"] = str(exc)
        out["targets"] = jobs
        return out

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
