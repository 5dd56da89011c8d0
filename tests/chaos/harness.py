"""The chaos harness: many FineTuneJobs live their lives on the dev cluster (KWOK plays the
trainers: validation passes, the gang runs, rank 0 reports progress, the gang exits 0) while
faults (:mod:`tests.chaos.faults`) land at random points of those lives.

A monitor thread lists jobs, pods and nodes about once a second and checks, all the time:

* **duplicate gangs**: live worker pods (not terminated, not being deleted, on a node that
  exists) of two attempts of one job at once, more live pods of one attempt than its
  ``resources.nodes``, two live pods of one rank, or two live validation pods;
* **stuck without a reason**: a non-terminal job whose ``status`` did not change for
  ``stuck_after`` seconds while none of the conditions that explain its phase (Validating:
  Validated; Queued: Admitted/Restarting/PodCreationFailed; Running: Running/ProgressKnown/
  Restarting; Suspended: Suspended; Pending: any) has both a reason and a message;
* **GPU time held by pods that could never run**: GPU-seconds of bound, live pods of attempts
  whose whole gang was never Running at once (a pod that never starts, a partial gang);
* **lost jobs**: a job object that disappears without the harness deleting it, or one not in
  a terminal phase ``drain_seconds`` after the last fault.

Time to recover is measured per fault: job faults from injection until the job runs again in
an attempt it was not running at injection (or ends); operator faults until a replica leads
again; API server / etcd restarts until a job's status changes again after the restart;
hostile progress from the end of the fault until the job's progress advances again.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import re
import ssl
import statistics
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubetune.devcluster import manifests, simulate
from kubetune.devcluster.testing import Cluster
from tests.chaos.faults import KINDS, PROGRESS_MODES, STUCK_VARIANTS, ProgressServer, schedule
from tests.chaos.faults import stuck_status as _stuck_status
from tests.e2e.operator_helpers import (
    OperatorProcess,
    install,
    manifest,
    restricted_namespace,
)

GROUP = "/apis/kubetune.io/v1alpha1"
TERMINAL = ("Succeeded", "Failed")
LABEL_JOB = "kubetune.io/job-name"
LABEL_ROLE = "kubetune.io/role"
LABEL_ATTEMPT = "kubetune.io/attempt"
LABEL_RANK = "kubetune.io/rank"
EXPLAINING = {
    "Validating": ("Validated",),
    "Queued": ("Admitted", "Restarting", "PodCreationFailed"),
    "Running": ("Running", "ProgressKnown", "Restarting"),
    "Suspended": ("Suspended",),
}
#: Operator settings of a chaos run on top of the e2e TEST_SETTINGS: gangs that do not start
#: are released after 10 s, unplaceable gangs retried after 5 s, one namespace served.
#: Exceptions the operator may log while the API server or etcd is away (not findings).
EXPECTED_ERRORS = re.compile(
    r"Connect|ServerDisconnected|Connection reset|refused|Timeout|EOF|etcdserver|"
    r"TooManyRequests|ServiceUnavailable|\b50[34]\b",
    re.I,
)
#: How long a pod told to exit may keep running before the driver tells it again.
EXIT_NUDGE_SECONDS = 15.0
NUDGE_ANNOTATION = "chaos.kubetune.io/exit-nudge"
OPERATOR_ENV = {
    "STARTUP_TIMEOUT_SECONDS": "10",
    "UNSCHEDULABLE_RETRY_SECONDS": "5",
}


@dataclass
class ChaosConfig:
    faults: int = 200
    seed: int = 1
    concurrency: int = 7  # live jobs at once
    gap: tuple[float, float] = (1.5, 4.5)  # seconds between two injections
    run_seconds: tuple[float, float] = (8.0, 20.0)  # running time before the gang exits 0
    stuck_after: float = 30.0
    drain_seconds: float = 180.0
    poll_seconds: float = 1.0


# -- a small REST client (the admin's client certificate; keep-alive per thread) ------------------
class Api:
    def __init__(self, cluster: Cluster) -> None:
        url = urllib.parse.urlparse(cluster.server)
        self.host, self.port = url.hostname or "127.0.0.1", int(url.port or 443)
        pki = cluster.dev.pki
        self.ctx = ssl.create_default_context(cafile=str(pki.ca_crt))
        self.ctx.load_cert_chain(str(pki.client_crt("admin")), str(pki.client_key("admin")))
        self.local = threading.local()

    def _conn(self, timeout: float) -> http.client.HTTPSConnection:
        conn: http.client.HTTPSConnection | None = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(
                self.host, self.port, context=self.ctx, timeout=timeout
            )
            self.local.conn = conn
        conn.timeout = timeout
        return conn

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        patch: str = "application/merge-patch+json",
        timeout: float = 5.0,
    ) -> tuple[int, Any]:
        """(status code, decoded JSON or None); code 0 when the server could not be reached."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = patch if method == "PATCH" else "application/json"
        for _ in range(2):  # once more on a stale keep-alive connection
            conn = self._conn(timeout)
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                continue
            try:
                return resp.status, json.loads(raw) if raw else None
            except ValueError:
                return resp.status, None
        return 0, None

    def items(self, path: str) -> list[dict[str, Any]] | None:
        code, doc = self.call("GET", path)
        return list(doc.get("items") or []) if code == 200 and doc else None

    def ready(self) -> bool:
        return self.call("GET", "/readyz", timeout=2)[0] == 200


# -- what is recorded --------------------------------------------------------------------------
@dataclass
class Fault:
    n: int
    kind: str
    at: float  # seconds since the run started
    target: str = ""
    detail: str = ""
    job: str | None = None
    attempt: int = 0  # the job's attempts at injection
    was_running: bool = False
    recovered_at: float | None = None
    recover_s: float | None = None
    leader_s: float | None = None
    detect_s: float | None = None
    ended_at: float | None = None  # end of a lasting fault (node back, progress normal)
    note: str = ""
    landed: bool = True  # False while a pod_never_ready fault waits for the next gang
    # internal
    restore_due: float = field(default=0.0, repr=False)
    progress_step: int = field(default=0, repr=False)


@dataclass
class JobRecord:
    name: str
    nodes: int
    gpus: int
    created: float
    run_for: float
    phase: str = "Pending"
    status_key: str = ""
    changed: float = 0.0
    attempts: int = 0
    running_attempt: int | None = None  # attempt seen Running (current)
    running_since: float | None = None
    finishing: dict[str, float] = field(default_factory=dict)  # pod uid -> when told to exit
    exiting_attempt: int | None = None  # the attempt whose gang was told to exit 0
    terminal_at: float | None = None
    deleted: bool = False
    lost: str = ""
    reason: str = ""
    stuck_open: bool = False
    status: dict[str, Any] = field(default_factory=dict)


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _gpus(pod: dict[str, Any]) -> int:
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        value = (res.get("limits") or {}).get(manifests.GPU_RESOURCE) or (
            res.get("requests") or {}
        ).get(manifests.GPU_RESOURCE)
        total += int(value or 0)
    return total


def _live(pod: dict[str, Any], nodes: set[str] | None) -> bool:
    meta, spec, st = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or st.get("phase") in TERMINAL:
        return False
    node = spec.get("nodeName")
    return not (node and nodes is not None and node not in nodes)


def explained(status: dict[str, Any]) -> str | None:
    """``reason: message`` of a condition explaining the job's phase, or None."""
    phase = status.get("phase") or "Pending"
    kinds = EXPLAINING.get(phase)
    for cond in status.get("conditions") or []:
        if kinds is not None and cond.get("type") not in kinds:
            continue
        if cond.get("reason") and (cond.get("message") or "").strip():
            return f"{cond['type']}={cond.get('status')} {cond['reason']}: {cond['message']}"
    return None


def gang_problems(
    pods: list[dict[str, Any]], nodes: set[str] | None, sizes: dict[str, int]
) -> list[tuple[str, str, list[str]]]:
    """(job, problem, pod names) for every duplicate gang among ``pods``: live worker pods of
    two attempts of one job, more live pods of one attempt than ``sizes[job]``, two live pods
    of one rank, two live validation pods."""
    live: dict[str, dict[int, list[dict[str, Any]]]] = {}
    validation: dict[str, list[str]] = {}
    for pod in pods:
        labels = _labels(pod)
        job = labels.get(LABEL_JOB)
        if job is None or not _live(pod, nodes):
            continue
        if labels.get(LABEL_ROLE) == "validation":
            validation.setdefault(job, []).append(pod["metadata"]["name"])
            continue
        attempt = _int(labels.get(LABEL_ATTEMPT))
        if attempt is not None:
            live.setdefault(job, {}).setdefault(attempt, []).append(pod)
    out: list[tuple[str, str, list[str]]] = []
    for job, attempts in sorted(live.items()):
        names = sorted(p["metadata"]["name"] for a in attempts.values() for p in a)
        if len(attempts) > 1:
            out.append((job, f"live pods of attempts {sorted(attempts)} at once", names))
        for attempt, group in sorted(attempts.items()):
            if job in sizes and len(group) > sizes[job]:
                out.append(
                    (job, f"{len(group)} live pods of attempt {attempt} > {sizes[job]}", names)
                )
            ranks = [_labels(p).get(LABEL_RANK) for p in group]
            if len(set(ranks)) != len(ranks):
                out.append((job, f"two live pods of one rank in attempt {attempt}", names))
    for job, names in sorted(validation.items()):
        if len(names) > 1:
            out.append((job, f"{len(names)} live validation pods", sorted(names)))
    return out


def summarize(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    values = sorted(values)
    p95 = values[min(len(values) - 1, max(0, round(0.95 * len(values)) - 1))]
    return {
        "p50": round(statistics.median(values), 2),
        "p95": round(p95, 2),
        "max": round(values[-1], 2),
    }


class ChaosRun:
    def __init__(
        self,
        cluster: Cluster,
        workdir: Path,
        cfg: ChaosConfig,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.say = say or (lambda _line: None)
        self.cluster = cluster
        self.workdir = workdir
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.api = Api(cluster)
        self.ns = f"chaos-{cfg.seed}-{random.Random().randrange(16**6):06x}"
        self.progress = ProgressServer()
        self.lock = threading.RLock()
        self.t0 = time.monotonic()
        self.jobs: dict[str, JobRecord] = {}
        self.faults: list[Fault] = []
        self.open: list[Fault] = []
        self.replicas: list[OperatorProcess] = []
        self.replica_count = 0
        self.kubeconfig: Path | None = None
        self.pods: list[dict[str, Any]] = []
        self.nodes: set[str] | None = None
        self.snapshot_at = 0.0
        self.duplicates: list[dict[str, Any]] = []
        self._dup_seen: set[str] = set()
        self.stuck: list[dict[str, Any]] = []
        self.stuck_explained: list[dict[str, Any]] = []
        self.attempt_gpu_s: dict[tuple[str, int], float] = {}
        self.attempt_ran: set[tuple[str, int]] = set()
        self.attempt_cause: dict[tuple[str, int], str] = {}
        self.polls = 0
        self.nudges = 0
        self.unstarted: dict[str, float] = {}  # pod uid -> since when bound and not started
        self.failed_polls = 0
        self.stop = threading.Event()
        self.job_seq = 0
        self.lost_nodes: dict[str, Fault] = {}
        self.seen_uids: set[str] = set()
        self.last_status_change = 0.0
        self.aborted: list[str] = []
        self.requeue: list[str] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- set-up and tear-down ------------------------------------------------------------------
    def setup(self) -> None:
        self.kubeconfig = install(self.cluster, self.workdir)
        self.cluster.kubectl("create", "namespace", self.ns)
        deadline = time.monotonic() + 60
        while (
            self.api.call("GET", f"/api/v1/namespaces/{self.ns}/serviceaccounts/default")[0] != 200
        ):
            assert time.monotonic() < deadline, "no default ServiceAccount"
            time.sleep(0.2)
        restricted_namespace(self.cluster, self.ns)
        self.progress.start()
        self.spawn()
        self.wait_leader(60)
        self.spawn()

    def spawn(self, name: str | None = None) -> OperatorProcess:
        assert self.kubeconfig is not None
        if name is None:
            self.replica_count += 1
            name = f"chaos-{self.replica_count}"
        env = {f"KUBETUNE_OPERATOR_{k}": v for k, v in OPERATOR_ENV.items()}
        env["KUBETUNE_OPERATOR_NAMESPACES"] = self.ns
        env["KUBETUNE_OPERATOR_PROGRESS_URL_TEMPLATE"] = self.progress.template
        replica = OperatorProcess(self.kubeconfig, self.workdir, name, env=env).start()
        self.replicas.append(replica)
        return replica

    def leader(self) -> OperatorProcess | None:
        live = [r for r in self.replicas if r.alive and r.is_leader()]
        return live[0] if len(live) == 1 else None

    def wait_leader(self, timeout: float) -> OperatorProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lead = self.leader()
            if lead is not None:
                return lead
            time.sleep(0.2)
        raise AssertionError("no operator replica leads:\n" + self.log_tails())

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(f"--- {r.name}\n{r.log_tail(lines)}" for r in self.replicas)

    def close(self) -> None:
        self.stop.set()
        for fault in list(self.lost_nodes.values()):
            with contextlib.suppress(Exception):
                self.restore_node(fault)
        for replica in self.replicas:
            with contextlib.suppress(Exception):
                replica.stop()
        with contextlib.suppress(Exception):
            self.progress.stop()
        self.cluster.kubectl(
            "delete", "namespace", self.ns, "--wait=false", "--ignore-not-found", check=False
        )

    # -- the monitor ---------------------------------------------------------------------------
    def monitor(self) -> None:
        last = time.monotonic()
        while not self.stop.is_set():
            started = self.now()
            jobs = self.api.items(f"{GROUP}/namespaces/{self.ns}/finetunejobs")
            pods = self.api.items(f"/api/v1/namespaces/{self.ns}/pods")
            nodes = self.api.items("/api/v1/nodes")
            now_m = time.monotonic()
            dt, last = min(now_m - last, 10.0), now_m
            with self.lock:
                self.polls += 1
                if jobs is None or pods is None or nodes is None:
                    self.failed_polls += 1
                else:
                    self.observe(started, jobs, pods, {n["metadata"]["name"] for n in nodes}, dt)
            self.stop.wait(self.cfg.poll_seconds)

    def observe(
        self,
        started: float,
        jobs: list[dict[str, Any]],
        pods: list[dict[str, Any]],
        nodes: set[str],
        dt: float,
    ) -> None:
        now = self.now()
        self.pods, self.nodes, self.snapshot_at = pods, nodes, now
        by_name = {j["metadata"]["name"]: j for j in jobs}
        for rec in self.jobs.values():
            obj = by_name.get(rec.name)
            if obj is None:
                if not rec.deleted and not rec.lost and rec.created < started - 2:
                    rec.lost = f"job object gone at t={now:.1f}s (last phase {rec.phase})"
                continue
            st = obj.get("status") or {}
            key = json.dumps(st, sort_keys=True)
            if key != rec.status_key:
                rec.status_key, rec.changed, rec.status = key, now, st
                self.last_status_change = now
                rec.stuck_open = False
            rec.phase = st.get("phase") or "Pending"
            rec.attempts = int(st.get("attempts") or 0)
            if rec.phase == "Running":
                if rec.running_attempt != rec.attempts:
                    rec.running_attempt, rec.running_since = rec.attempts, now
            else:
                rec.running_attempt = rec.running_since = None
            if rec.phase in TERMINAL and rec.terminal_at is None:
                rec.terminal_at = now
                failed = next(
                    (c for c in st.get("conditions") or [] if c.get("type") == "Failed"), {}
                )
                rec.reason = f"{failed.get('reason')}: {failed.get('message')}" if failed else ""
            if (
                rec.phase not in TERMINAL
                and now - rec.changed >= self.cfg.stuck_after
                and not rec.stuck_open
            ):
                rec.stuck_open = True
                why = explained(st)
                entry = {
                    "job": rec.name,
                    "t": round(now, 1),
                    "phase": rec.phase,
                    "unchanged_s": round(now - rec.changed, 1),
                    "why": why,
                    "conditions": st.get("conditions") or [],
                }
                (self.stuck_explained if why else self.stuck).append(entry)
        self.check_gangs(now, pods, nodes, dt)
        self.check_recovery(now)

    def check_gangs(
        self, now: float, pods: list[dict[str, Any]], nodes: set[str], dt: float
    ) -> None:
        sizes = {name: rec.nodes for name, rec in self.jobs.items()}
        for job, problem, names in gang_problems(pods, nodes, sizes):
            self.duplicate(now, job, problem, names)
        running: dict[tuple[str, int], int] = {}
        for pod in pods:
            labels = _labels(pod)
            job, attempt = labels.get(LABEL_JOB), _int(labels.get(LABEL_ATTEMPT))
            if job is None or attempt is None or not _live(pod, nodes):
                continue
            key = (job, attempt)
            if (pod.get("status") or {}).get("phase") == "Running":
                running[key] = running.get(key, 0) + 1
            if (pod.get("spec") or {}).get("nodeName"):
                self.attempt_gpu_s[key] = self.attempt_gpu_s.get(key, 0.0) + dt * _gpus(pod)
        for key, n in running.items():
            if n >= sizes.get(key[0], 1 << 30):
                self.attempt_ran.add(key)

    def duplicate(self, now: float, job: str, problem: str, pods: list[str]) -> None:
        key = f"{job}:{problem}"
        if key in self._dup_seen:
            return
        self._dup_seen.add(key)
        self.duplicates.append(
            {
                "job": job,
                "t": round(now, 1),
                "problem": problem,
                "pods": sorted(pods),
                "open_faults": [f"{f.n}:{f.kind}" for f in self.open],
            }
        )

    def check_recovery(self, now: float) -> None:
        for fault in list(self.open):
            if fault.job is None or fault.recovered_at is not None or not fault.landed:
                continue
            rec = self.jobs.get(fault.job)
            if rec is None:
                continue
            if fault.kind in PROGRESS_MODES:
                conds = {c.get("type"): c for c in rec.status.get("conditions") or []}
                known = conds.get("ProgressKnown", {})
                if fault.detect_s is None and known.get("status") == "False":
                    fault.detect_s = round(now - fault.at, 2)
                if rec.attempts != fault.attempt or rec.phase != "Running":
                    why = conds.get("Restarting") or conds.get("Running") or {}
                    others = [
                        f"{f.n}:{f.kind}"
                        for f in self.faults
                        if f is not fault and f.at >= fault.at - 1 and f.job != fault.job
                    ]
                    fault.note = (
                        f"job left Running/attempt {fault.attempt} during hostile progress: "
                        f"phase {rec.phase}, attempts {rec.attempts}, "
                        f"{why.get('reason')}: {why.get('message')}; faults since: {others}"
                    )
                    fault.recovered_at = now
                elif fault.ended_at is not None:
                    step = int((rec.status.get("progress") or {}).get("step") or 0)
                    if step >= fault.progress_step and known.get("status") == "True":
                        fault.recovered_at = now
                        fault.recover_s = round(now - fault.ended_at, 2)
                continue
            moved = rec.phase in TERMINAL or (
                rec.phase == "Running" and (not fault.was_running or rec.attempts > fault.attempt)
            )
            if fault.detect_s is None and (rec.attempts > fault.attempt or rec.phase in TERMINAL):
                fault.detect_s = round(now - fault.at, 2)
            if moved:
                fault.recovered_at = now
                fault.recover_s = round(now - fault.at, 2)

    # -- driving the jobs ----------------------------------------------------------------------
    def create_job(self) -> None:
        self.job_seq += 1
        name = f"cj{self.cfg.seed}-{self.job_seq:03d}"
        nodes = self.rng.choice([1, 2, 2, 3])
        gpus = self.rng.choice([2, 4])
        doc = manifest(
            name,
            self.ns,
            resources={"nodes": nodes, "gpusPerNode": gpus},
            hyperparameters={"globalBatchSize": 2 * nodes * gpus, "microBatchSize": 1},
            runPolicy={"backoffLimit": 50, "schedulingTimeoutSeconds": 30},
        )
        rec = JobRecord(name, nodes, gpus, self.now(), self.rng.uniform(*self.cfg.run_seconds))
        rec.changed = rec.created
        code, _ = self.api.call("POST", f"{GROUP}/namespaces/{self.ns}/finetunejobs", doc)
        if code not in (200, 201, 409):
            self.job_seq -= 1  # API server away: try again later
            return
        with self.lock:
            self.jobs[name] = rec

    def annotate_exit(self, pod: dict[str, Any], code: int = 0, nudge: bool = False) -> bool:
        meta = pod["metadata"]
        annotations = {manifests.EXIT_CODE_ANNOTATION: str(code)}
        if nudge:  # a new value, so the pod object changes and KWOK gets a fresh event
            annotations[NUDGE_ANNOTATION] = f"{self.now():.1f}"
        status, _ = self.api.call(
            "PATCH",
            f"/api/v1/namespaces/{self.ns}/pods/{meta['name']}",
            {"metadata": {"annotations": annotations}},
        )
        return status == 200

    def tell_exit(self, rec: JobRecord, pod: dict[str, Any]) -> None:
        """Tell a running pod to exit 0 (KWOK's exit stage reads the annotation), once; again
        if it still runs ``EXIT_NUDGE_SECONDS`` later. KWOK is our stand-in kubelet, and after
        an etcd restart it can miss the annotation's update event (seen: a pod annotated just
        before the restart kept running for the whole drain). A real kubelet has no such
        step: the retry keeps the stand-in's miss from being reported as the operator losing
        the job, and the report counts the retries (``kubelet_nudges``)."""
        uid, now = pod["metadata"]["uid"], self.now()
        told = rec.finishing.get(uid)
        if told is None:
            if self.annotate_exit(pod):
                rec.finishing[uid] = now
        elif now - told > EXIT_NUDGE_SECONDS and self.annotate_exit(pod, nudge=True):
            rec.finishing[uid] = now
            self.nudges += 1

    def nudge_if_not_started(self, pod: dict[str, Any]) -> None:
        """The other event KWOK was seen to miss across etcd restarts: a pod bound to a node
        that it never starts (a validation pod stayed Pending on its node for the whole
        drain). A bound, ungated pod with no container status yet gets a nudge annotation
        after ``EXIT_NUDGE_SECONDS`` (and again after each further wait). Pods a
        pod_never_ready fault holds carry container statuses (waiting) and are left alone;
        KWOK's start stage would skip them anyway (their Ready condition is True)."""
        meta, spec = pod["metadata"], pod.get("spec") or {}
        status = pod.get("status") or {}
        waiting = (
            spec.get("nodeName")
            and not spec.get("schedulingGates")
            and status.get("phase") == "Pending"
            and not status.get("containerStatuses")
        )
        if not waiting:
            self.unstarted.pop(meta["uid"], None)
            return
        now = self.now()
        since = self.unstarted.setdefault(meta["uid"], now)
        if now - since > EXIT_NUDGE_SECONDS:
            status_code, _ = self.api.call(
                "PATCH",
                f"/api/v1/namespaces/{self.ns}/pods/{meta['name']}",
                {"metadata": {"annotations": {NUDGE_ANNOTATION: f"{now:.1f}"}}},
            )
            if status_code == 200:
                self.unstarted[meta["uid"]] = now
                self.nudges += 1

    def drive(self) -> None:
        with self.lock:
            pods = list(self.pods)
            jobs = list(self.jobs.values())
            now = self.now()
        busy = {f.job for f in self.open if f.job and f.kind in PROGRESS_MODES}
        for pod in pods:
            labels, meta = _labels(pod), pod["metadata"]
            rec = self.jobs.get(labels.get(LABEL_JOB, ""))
            if rec is None or meta.get("deletionTimestamp"):
                continue
            phase = (pod.get("status") or {}).get("phase")
            if labels.get(LABEL_ROLE) == "validation" and phase == "Running":
                self.tell_exit(rec, pod)
            self.nudge_if_not_started(pod)
        for rec in jobs:
            if rec.phase in TERMINAL:
                if not rec.deleted and rec.terminal_at is not None and now - rec.terminal_at > 3:
                    rec.deleted = True
                    self.api.call("DELETE", f"{GROUP}/namespaces/{self.ns}/finetunejobs/{rec.name}")
                continue
            if rec.running_attempt is None or rec.running_since is None:
                continue
            gang = [
                p
                for p in pods
                if _labels(p).get(LABEL_JOB) == rec.name
                and _labels(p).get(LABEL_ROLE) == "worker"
                and _int(_labels(p).get(LABEL_ATTEMPT)) == rec.running_attempt
                and (p.get("status") or {}).get("phase") == "Running"
            ]
            rank0 = next((p for p in gang if _labels(p).get(LABEL_RANK) == "0"), None)
            ran = now - rec.running_since
            if rank0 is not None and (rank0.get("status") or {}).get("podIP"):
                step = int(ran * 10)
                self.progress.serve(rank0["status"]["podIP"], step, 100000)
            # Once told, the pods still running are told again (tell_exit waits between
            # tries) even after some have exited: KWOK can miss one pod's annotation while it
            # acts on another's (seen: rank 0 exited, ranks 1-2 kept running for the drain).
            exiting = rec.exiting_attempt == rec.running_attempt
            due = ran >= rec.run_for and rec.name not in busy and len(gang) == rec.nodes
            if due or exiting:
                rec.exiting_attempt = rec.running_attempt
                for pod in gang:
                    self.tell_exit(rec, pod)

    # -- faults --------------------------------------------------------------------------------
    def candidates(self, kind: str) -> list[JobRecord]:
        busy = {f.job for f in self.open if f.job}
        out = []
        for rec in sorted(self.jobs.values(), key=lambda r: r.name):
            if rec.phase in TERMINAL or rec.name in busy:
                continue
            if self.applies(kind, rec, self.job_pods(rec.name)):
                out.append(rec)
        return out

    def applies(self, kind: str, rec: JobRecord, pods: list[dict[str, Any]]) -> bool:
        workers = [p for p in pods if _labels(p).get(LABEL_ROLE) == "worker"]
        if kind == "pod_kill":
            return bool(pods)
        if kind in ("node_not_ready", "node_delete"):
            return any(p["spec"].get("nodeName") for p in workers)
        if kind == "pod_never_ready":
            return not workers
        return bool(
            kind in PROGRESS_MODES
            and rec.phase == "Running"
            and rec.exiting_attempt != rec.running_attempt
            and self.rank0_ip(rec)
        )

    def job_pods(self, job: str) -> list[dict[str, Any]]:
        return [p for p in self.pods if _labels(p).get(LABEL_JOB) == job and _live(p, self.nodes)]

    def rank0_ip(self, rec: JobRecord) -> str | None:
        for p in self.job_pods(rec.name):
            labels = _labels(p)
            if (
                labels.get(LABEL_ROLE) == "worker"
                and labels.get(LABEL_RANK) == "0"
                and _int(labels.get(LABEL_ATTEMPT)) == rec.running_attempt
            ):
                return (p.get("status") or {}).get("podIP")
        return None

    def inject(self, n: int, kind: str) -> Fault | None:
        """Inject ``kind`` now if it applies to the current state; None if it does not."""
        scope = KINDS[kind].scope
        if scope == "cluster":
            if any(f.job is None and f.recovered_at is None for f in self.open):
                return None
            return self.inject_cluster(n, kind)
        with self.lock:
            if kind.startswith("node_") and self.lost_nodes:
                return None
            jobs = self.candidates(kind)
            if not jobs:
                return None
            rec = self.rng.choice(jobs)
            fault = Fault(
                n,
                kind,
                self.now(),
                job=rec.name,
                attempt=rec.attempts,
                was_running=rec.phase == "Running",
                target=rec.name,
            )
            pods = sorted(self.job_pods(rec.name), key=lambda p: p["metadata"]["name"])
        if kind == "pod_kill":
            pod = self.rng.choice(pods)
            fault.detail = f"pod {pod['metadata']['name']} ({rec.phase})"
            self.api.call("DELETE", f"/api/v1/namespaces/{self.ns}/pods/{pod['metadata']['name']}")
        elif kind.startswith("node_"):
            workers = [
                p
                for p in pods
                if p["spec"].get("nodeName") and _labels(p).get(LABEL_ROLE) == "worker"
            ]
            node = self.rng.choice(workers)["spec"]["nodeName"]
            fault.detail = f"node {node} ({rec.phase})"
            fault.restore_due = self.now() + 25
            if kind == "node_not_ready":
                self.api.call(
                    "PATCH",
                    f"/api/v1/nodes/{node}",
                    {"metadata": {"annotations": {manifests.NODE_READY_ANNOTATION: "false"}}},
                )
            else:
                self.api.call("DELETE", f"/api/v1/nodes/{node}")
            self.lost_nodes[node] = fault
        elif kind == "pod_never_ready":
            variant = self.rng.choice(sorted(STUCK_VARIANTS))
            fault.landed = False
            with self.lock:
                self.open.append(fault)
            threading.Thread(
                target=self.stick_next_gang, args=(rec, variant, fault), daemon=True
            ).start()
            return fault
        else:
            ip = self.rank0_ip(rec)
            if not ip:
                return None
            fault.detail = f"{PROGRESS_MODES[kind]} /progress of {ip}"
            fault.restore_due = self.now() + self.rng.uniform(4, 10)
            self.progress.set_mode(ip, PROGRESS_MODES[kind])
            fault.target = ip
        with self.lock:
            self.faults.append(fault)
            self.open.append(fault)
        return fault

    def stick_next_gang(self, rec: JobRecord, variant: str, fault: Fault) -> None:
        """(A thread) watch the job's pods; the first worker pod of its next gang never
        starts. The fault lands then, or is dropped if no gang comes within 60 s."""
        landed = self._stick(rec, variant, fault)
        with self.lock:
            if landed:
                fault.landed = True
                self.faults.append(fault)
            else:
                self.aborted.append(f"pod_never_ready on {rec.name}: no new gang within 60s")
                self.requeue.append(fault.kind)
                if fault in self.open:
                    self.open.remove(fault)

    def _stick(self, rec: JobRecord, variant: str, fault: Fault) -> bool:
        path = (
            f"/api/v1/namespaces/{self.ns}/pods?watch=1&timeoutSeconds=60&labelSelector="
            + urllib.parse.quote(f"{LABEL_JOB}={rec.name},{LABEL_ROLE}=worker")
        )
        conn = http.client.HTTPSConnection(
            self.api.host, self.api.port, context=self.api.ctx, timeout=65
        )
        deadline = time.monotonic() + 60
        try:
            conn.request("GET", path, headers={"Accept": "application/json"})
            resp = conn.getresponse()
            while time.monotonic() < deadline:
                line = resp.readline()
                if not line:
                    return False
                event = json.loads(line)
                pod = event.get("object") or {}
                if (
                    event.get("type") not in ("ADDED", "MODIFIED")
                    or not _int(_labels(pod).get(LABEL_ATTEMPT))
                    or not _live(pod, None)
                ):
                    continue
                late = (pod.get("status") or {}).get("phase") != "Pending"
                code, _ = self.api.call(
                    "PATCH",
                    f"/api/v1/namespaces/{self.ns}/pods/{pod['metadata']['name']}/status",
                    _stuck_status(pod, variant),
                )
                if code != 200:
                    continue
                fault.at = self.now()
                fault.attempt = _int(_labels(pod).get(LABEL_ATTEMPT)) or 0
                fault.attempt -= 1  # "moved on" = running in a later attempt than the stuck one
                fault.was_running = True
                gated = bool((pod.get("spec") or {}).get("schedulingGates"))
                fault.detail = (
                    f"{variant} on {pod['metadata']['name']}"
                    + (" (gated)" if gated else "")
                    + (" (already running)" if late else "")
                )
                with self.lock:
                    self.attempt_cause[(rec.name, fault.attempt + 1)] = "pod_never_ready"
                    fault.n = len(self.faults) + 1
                return True
        except (OSError, http.client.HTTPException, ValueError):
            return False
        finally:
            conn.close()
        return False

    def inject_cluster(self, n: int, kind: str) -> Fault | None:
        fault = Fault(n, kind, self.now())
        if kind in ("operator_sigkill", "leader_failover"):
            lead = self.leader()
            if lead is None or len([r for r in self.replicas if r.alive]) < 2:
                return None
            live = sorted((r for r in self.replicas if r.alive), key=lambda r: r.name)
            victim = lead if kind == "leader_failover" else self.rng.choice(live)
            fault.target = victim.name
            fault.detail = "leader" if victim is lead else "standby"
            fault.at = self.now()
            victim.kill()
            self.replicas.remove(victim)
            if kind == "operator_sigkill":
                self.spawn(victim.name)  # the kubelet restarts the container
        else:
            component = "kube-apiserver" if kind == "apiserver_restart" else "etcd"
            fault.target = component
            fault.at = self.now()
            with self.lock:
                self.faults.append(fault)
                self.open.append(fault)
            self.cluster.dev.restart(component, hard=True, die_with_parent=True, timeout=120)
            deadline = time.monotonic() + 120
            while not self.api.ready() and time.monotonic() < deadline:
                time.sleep(0.1)
            fault.ended_at = self.now()
            fault.detail = f"back in {fault.ended_at - fault.at:.1f}s"
            return fault
        with self.lock:
            self.faults.append(fault)
            self.open.append(fault)
        return fault

    def tend(self) -> None:
        """Follow the open faults: end lasting ones, measure the cluster-level recoveries."""
        now = self.now()
        for fault in list(self.open):
            if not fault.landed:
                continue
            if fault.kind in PROGRESS_MODES and fault.ended_at is None and now >= fault.restore_due:
                self.progress.set_mode(fault.target, None)
                with self.lock:
                    fault.ended_at = now
                    doc = self.progress.documents.get(fault.target) or {}
                    fault.progress_step = int(doc.get("step") or 0)
            if (
                fault.kind.startswith("node_")
                and fault.ended_at is None
                and (fault.recovered_at is not None or now >= fault.restore_due)
            ):
                self.restore_node(fault)
            if fault.job is None and fault.recovered_at is None:
                self.tend_cluster(fault, now)
            done = fault.recovered_at is not None and (
                fault.ended_at is not None
                or not (fault.kind.startswith("node_") or fault.kind in PROGRESS_MODES)
            )
            if done or now - fault.at > self.cfg.drain_seconds:
                with self.lock:
                    if fault in self.open:
                        self.open.remove(fault)
                    if fault.recovered_at is None:
                        fault.note = fault.note or "did not recover"
        if len([r for r in self.replicas if r.alive]) < 2 and not any(
            f.job is None and f.recovered_at is None for f in self.open
        ):
            self.spawn()  # a new standby after a failover

    def tend_cluster(self, fault: Fault, now: float) -> None:
        if fault.kind in ("apiserver_restart", "etcd_restart") and fault.ended_at is None:
            return
        lead = self.leader()
        if lead is None:
            return
        if fault.leader_s is None:
            fault.leader_s = round(now - fault.at, 2)
        if fault.kind in ("operator_sigkill", "leader_failover"):
            fault.recovered_at = now
            fault.recover_s = fault.leader_s
            return
        # API server / etcd: recovered once a job's status changes after the restart
        ended = fault.ended_at or now
        if self.last_status_change > ended or not any(
            r.phase not in TERMINAL for r in self.jobs.values()
        ):
            fault.recovered_at = now
            fault.recover_s = round(now - fault.at, 2)

    def restore_node(self, fault: Fault) -> None:
        node = fault.detail.split()[1]
        if fault.kind == "node_not_ready":
            self.api.call(
                "PATCH",
                f"/api/v1/nodes/{node}",
                {"metadata": {"annotations": {manifests.NODE_READY_ANNOTATION: None}}},
            )
        else:
            simulate.create_node(
                node,
                gpus=0 if node.startswith("kwok-cpu") else 8,
                wait=False,
                kubeconfig=self.cluster.kubeconfig,
                kubectl=self.cluster.kubectl_path,
            )
        fault.ended_at = self.now()
        self.lost_nodes.pop(node, None)

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        kinds = schedule(self.cfg.faults, self.rng)
        monitor = threading.Thread(target=self.monitor, name="chaos-monitor", daemon=True)
        monitor.start()
        self.wait_snapshot()
        next_at = self.now() + 3.0
        index, waited_since = 0, None
        skipped: list[str] = []
        while len(self.faults) < self.cfg.faults:
            self.keep_jobs()
            self.drive()
            self.tend()
            with self.lock:
                pending = sum(not f.landed for f in self.open)
            if self.requeue:
                kinds.insert(index, self.requeue.pop())
            if index >= len(kinds):
                kinds += schedule(max(1, self.cfg.faults - len(self.faults)), self.rng)
            if self.now() >= next_at and len(self.faults) + pending < self.cfg.faults:
                fault = self.inject(index + 1, kinds[index])
                if fault is not None:
                    index, waited_since = index + 1, None
                    if index % 20 == 0:
                        self.say(self.progress_line())
                    next_at = self.now() + self.rng.uniform(*self.cfg.gap)
                else:
                    waited_since = waited_since or self.now()
                    if self.now() - waited_since > 45:  # cannot apply: swap with the next one
                        skipped.append(kinds[index])
                        kinds.append(kinds.pop(index))
                        waited_since = None
            time.sleep(0.2)
        last_fault = self.now()
        while self.now() - last_fault < self.cfg.drain_seconds:
            self.drive()
            self.tend()
            with self.lock:
                pending = [r for r in self.jobs.values() if r.phase not in TERMINAL]
            if not pending and not self.open:
                break
            time.sleep(0.2)
        self.stop.set()
        monitor.join(timeout=30)
        return self.report(last_fault, skipped)

    def progress_line(self) -> str:
        with self.lock:
            jobs = list(self.jobs.values())
            return (
                f"t={self.now():.0f}s faults={len(self.faults)} jobs={len(jobs)} "
                f"done={sum(r.phase in TERMINAL for r in jobs)} "
                f"duplicates={len(self.duplicates)} stuck={len(self.stuck)}"
            )

    def wait_snapshot(self) -> None:
        deadline = time.monotonic() + 30
        while self.nodes is None and time.monotonic() < deadline:
            time.sleep(0.1)

    def keep_jobs(self) -> None:
        with self.lock:
            live = [r for r in self.jobs.values() if r.phase not in TERMINAL]
        if len(live) < self.cfg.concurrency:
            self.create_job()

    # -- the report ----------------------------------------------------------------------------
    def report(self, last_fault: float, skipped: list[str]) -> dict[str, Any]:
        with self.lock:
            jobs = list(self.jobs.values())
            faults = sorted(self.faults, key=lambda f: f.at)
        lost = [
            {
                "job": r.name,
                "why": r.lost
                or f"not terminal {self.cfg.drain_seconds:.0f}s after "
                f"the last fault (phase {r.phase}, attempts {r.attempts})",
                "conditions": (r.status or {}).get("conditions") or [],
                "driver": {
                    "running_attempt": r.running_attempt,
                    "running_since": r.running_since,
                    "run_for": round(r.run_for, 1),
                    "exiting_attempt": r.exiting_attempt,
                    "pods_told_to_exit": len(r.finishing),
                    "pods": [
                        {
                            "name": p["metadata"]["name"],
                            "phase": (p.get("status") or {}).get("phase"),
                            "node": (p.get("spec") or {}).get("nodeName"),
                            "deleting": bool(p["metadata"].get("deletionTimestamp")),
                        }
                        for p in self.pods
                        if _labels(p).get(LABEL_JOB) == r.name
                    ],
                },
            }
            for r in jobs
            if r.lost or r.phase not in TERMINAL
        ]
        never_ran = {k: v for k, v in self.attempt_gpu_s.items() if k not in self.attempt_ran}
        by_cause: dict[str, float] = {}
        for key, gpu_s in never_ran.items():
            cause = self.attempt_cause.get(key, "other (partial gang, gang hit before running)")
            by_cause[cause] = by_cause.get(cause, 0.0) + gpu_s / 60
        recovery: dict[str, Any] = {}
        for kind in KINDS:
            of_kind = [f for f in faults if f.kind == kind]
            rec_s = [f.recover_s for f in of_kind if f.recover_s is not None]
            entry: dict[str, Any] = {
                "injected": len(of_kind),
                "recovered": len(rec_s),
                "recover_s": summarize(rec_s),
            }
            leader = [f.leader_s for f in of_kind if f.leader_s is not None]
            if leader:
                entry["leader_s"] = summarize(leader)
            detect = [f.detect_s for f in of_kind if f.detect_s is not None]
            if detect:
                entry["detect_s"] = summarize(detect)
            interrupted = [f for f in of_kind if f.note.startswith("job left Running")]
            if interrupted:
                entry["interrupted_by_other_faults_or_restarts"] = len(interrupted)
            notes = sorted({f.note for f in of_kind if f.note})
            if notes:
                entry["notes"] = notes[:5]
            recovery[kind] = entry
        failed = [{"job": r.name, "reason": r.reason} for r in jobs if r.phase == "Failed"]
        logs = self.operator_log_findings()
        result = {
            "seed": self.cfg.seed,
            "config": asdict(self.cfg),
            "namespace": self.ns,
            "wall_seconds": round(self.now(), 1),
            "faults_injected": len(faults),
            "faults_postponed": skipped,
            "faults_aborted": self.aborted,
            "jobs": {
                "created": len(jobs),
                "succeeded": sum(r.phase == "Succeeded" for r in jobs),
                "failed": failed,
                "lost": lost,
            },
            "duplicate_gangs": self.duplicates,
            "stuck_without_reason": self.stuck,
            "stuck_with_reason": len(self.stuck_explained),
            "stuck_with_reason_examples": self.stuck_explained[:5],
            "gpu_minutes_never_ran": {
                "total": round(sum(never_ran.values()) / 60, 2),
                "by_cause": {k: round(v, 2) for k, v in by_cause.items()},
                "attempts": len(never_ran),
            },
            "gpu_minutes_total": round(sum(self.attempt_gpu_s.values()) / 60, 2),
            "recovery": recovery,
            "unrecovered_faults": [asdict(f) for f in faults if f.recovered_at is None],
            "faults": [
                {k: v for k, v in asdict(f).items() if k not in ("restore_due", "progress_step")}
                for f in faults
            ],
            "monitor": {
                "polls": self.polls,
                "failed_polls": self.failed_polls,
                "kubelet_nudges": self.nudges,
            },
            "operator_logs": logs,
        }
        result["targets"] = {
            "jobs_lost": len(lost),
            "duplicate_gangs": len(self.duplicates),
            "stuck_without_reason": len(self.stuck),
        }
        result["targets_met"] = not any(result["targets"].values())
        return result

    def operator_log_findings(self) -> dict[str, Any]:
        """ERROR lines and tracebacks of the operator replicas, by kind. Connection errors
        while the API server or etcd restarts are expected; anything else is a finding."""
        errors: dict[str, int] = {}
        exceptions: dict[str, int] = {}
        excerpts: dict[str, str] = {}
        for path in sorted(self.workdir.glob("operator-*.log")):
            lines = path.read_text(errors="replace").splitlines()
            for i, line in enumerate(lines):
                if " ERROR " in line or " CRITICAL " in line:
                    key = re.sub(r"\d+(\.\d+)*", "N", line.split(" ", 2)[-1])[:150]
                    errors[key] = errors.get(key, 0) + 1
                if not line.startswith("Traceback"):
                    continue
                end = i + 1
                while end < len(lines) and (
                    not lines[end]
                    or lines[end].startswith((" ", "Traceback", "The above", "During"))
                ):
                    end += 1
                final = lines[end] if end < len(lines) else ""
                kind = re.sub(r"\d+(\.\d+)*", "N", final)[:150]
                exceptions[kind] = exceptions.get(kind, 0) + 1
                block = "\n".join(lines[i : end + 1][-30:])
                excerpts.setdefault(kind, f"{path.name}:{i + 1}:\n{block}")
        unexpected = {k: v for k, v in exceptions.items() if not EXPECTED_ERRORS.search(k)}
        return {
            "error_kinds": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:20]),
            "exceptions": dict(sorted(exceptions.items(), key=lambda kv: -kv[1])),
            "unexpected_exceptions": unexpected,
            "unexpected_excerpts": [excerpts[k] for k in list(unexpected)[:5]],
        }


def table(report: dict[str, Any]) -> str:
    """The figures as a markdown table (for BENCHMARKS.md)."""
    t = report["targets"]
    g = report["gpu_minutes_never_ran"]
    lines = [
        f"Seed {report['seed']}: {report['faults_injected']} faults over "
        f"{report['jobs']['created']} jobs in {report['wall_seconds']:.0f} s.",
        "",
        "| measure | target | result |",
        "|---|---|---|",
        f"| jobs lost | 0 | {t['jobs_lost']} |",
        f"| duplicate gangs | 0 | {t['duplicate_gangs']} |",
        f"| jobs stuck without a condition saying why | 0 | {t['stuck_without_reason']} |",
        f"| GPU-minutes held by pods that could never run | - | {g['total']} "
        f"({', '.join(f'{k}: {v}' for k, v in g['by_cause'].items()) or 'none'}) |",
        f"| jobs succeeded / failed | - | {report['jobs']['succeeded']} / "
        f"{len(report['jobs']['failed'])} |",
        f"| pod events KWOK missed (exit or start, re-sent) | - | "
        f"{report['monitor'].get('kubelet_nudges', 0)} |",
        "",
        "| fault | injected | recovered | recover p50 / p95 / max (s) | measured until |",
        "|---|---|---|---|---|",
    ]
    until = {
        "operator_sigkill": "a replica leads",
        "leader_failover": "the standby leads",
        "apiserver_restart": "a job status changes again",
        "etcd_restart": "a job status changes again",
    }
    for kind, entry in report["recovery"].items():
        s = entry.get("recover_s") or {}
        figures = f"{s['p50']} / {s['p95']} / {s['max']}" if s else "-"
        what = until.get(
            kind,
            "progress advances after the fault ends"
            if kind.startswith("progress_")
            else "the job runs again in a new attempt (or ends)",
        )
        lines.append(
            f"| {kind} | {entry['injected']} | {entry['recovered']} | {figures} | {what} |"
        )
    return "\n".join(lines)


def iter_problems(report: dict[str, Any]) -> Iterator[str]:
    for item in report["jobs"]["lost"]:
        yield f"lost: {item['job']}: {item['why']}"
        # enough to diagnose from a CI log alone: the job's conditions and its faults
        for cond in item.get("conditions") or []:
            yield (
                f"  condition {cond.get('type')}={cond.get('status')} {cond.get('reason')}: "
                f"{cond.get('message')}"
            )
        yield f"  driver: {json.dumps(item.get('driver'), default=str)}"
        for fault in report["faults"]:
            if fault.get("job") == item["job"]:
                yield (
                    f"  fault {fault['n']}:{fault['kind']} at t={fault['at']:.1f} "
                    f"({fault.get('detail')}) recovered_at={fault.get('recovered_at')} "
                    f"ended_at={fault.get('ended_at')} note={fault.get('note')!r}"
                )
    for item in report["duplicate_gangs"]:
        yield f"duplicate gang: {item['job']} at t={item['t']}: {item['problem']}"
    for item in report["stuck_without_reason"]:
        yield f"stuck without reason: {item['job']} ({item['phase']}, {item['unchanged_s']}s)"
