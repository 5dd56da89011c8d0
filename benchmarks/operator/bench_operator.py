"""Operator benchmark: apply N FineTuneJobs at once to the local control plane.

Measures, in one run on one machine:

* per job: time from the job's creation (its ADDED watch event) to ALL its gang pods existing,
  and to all of them Running; p50/p99; and the batch span (``kubectl apply`` start -> last pod);
* the operator process's CPU seconds and peak RSS (``/proc``);
* API requests per job: the operator's own client (its ``kubetune_operator_api_requests_total``
  counter; kopf's few long-lived list/watch calls are per resource kind, not per job) and the
  API server's ``apiserver_request_total`` (all clients: scheduler, KWOK, controllers too);
* a baseline in the same run: a naive loop of ``kubectl create`` per job of the same objects
  (ConfigMap, Service, N pods; no validation, no gate), timed the same way;
* the Kueue variant (``--variants plain,kueue``, the default), in the same run: Kueue (built with
  the cluster binaries) runs for the whole run, with one ResourceFlavor and one ClusterQueue
  whose nominal quota is twice what all the jobs of one case request (so no job ever waits for
  quota: what is measured is Kueue's own overhead). Per case, each variant gets a fresh
  namespace and a fresh operator process; the ``kueue`` variant's jobs carry
  ``runPolicy.queueName`` (a LocalQueue in that namespace), the ``plain`` variant's do not.
  Per job: job created -> Workload created, Workload created -> admitted (Kueue), admitted ->
  all gang pods created (operator), job created -> all pods Running; plus Kueue's CPU seconds,
  its API requests (its ``rest_client_requests_total``, scraped with a ServiceAccount token
  since Kueue's metrics endpoint authenticates) and its own ``admission_wait_time`` histogram.
  With ``--rounds N`` the cases are interleaved: plain, kueue, plain, kueue, ...

Validation pods are completed by KWOK through the operator's generic
``validation_pod_annotations`` setting (``kwok.kubetune.io/exit-code: "0"``): the trainer is
not in the loop, the operator's full path (validate -> gang -> ungate -> running) is.

Usage: ``python benchmarks/operator/bench_operator.py --jobs 200 [--out RESULTS.json]
[--variants plain,kueue] [--rounds 1]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from kubetune.api import FineTuneJob
from kubetune.api.resolve import resolve
from kubetune.devcluster import DevCluster, manifests
from kubetune.devcluster.kueue import API_VERSION as KUEUE_API_VERSION
from kubetune.devcluster.kueue import KueueRunner, KueueState
from kubetune.devcluster.procs import free_port
from kubetune_operator.kube import Credentials, KubeClient
from kubetune_operator.render import render_config_map, render_service, render_worker_pod
from kubetune_operator.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def job_doc(
    name: str, namespace: str, pods: int, gpus: int, queue: str | None = None
) -> dict[str, Any]:
    run_policy: dict[str, Any] = {"schedulingTimeoutSeconds": 600}
    if queue:
        run_policy["queueName"] = queue
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "method": "lora",
            "model": {"uri": "/models/tiny-llama"},
            "dataset": {"train": "/data/train.jsonl", "format": "chat"},
            "hyperparameters": {
                "globalBatchSize": 2 * pods * gpus,
                "microBatchSize": 2,
                "learningRate": 2e-4,
            },
            "resources": {
                "nodes": pods,
                "gpusPerNode": gpus,
                "cpu": "1",
                "memory": "4Gi",
                "sharedMemory": "1Gi",
            },
            "output": {"uri": f"s3://results/{name}"},
            "runPolicy": run_policy,
        },
    }


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


class CpuAccount:
    """Who used the CPU during a window: the operator, the control plane, this harness, and
    everything else on the (shared) machine."""

    def __init__(
        self, dev: DevCluster, operator_pid: int | None, kueue_pid: int | None = None
    ) -> None:
        state = dev.load_state()
        self.cluster = {p.name: p.pid for p in (state.processes if state else [])}
        if kueue_pid:
            self.cluster["kueue"] = kueue_pid
        self.operator_pid = operator_pid

    def sample(self) -> dict[str, float]:
        out = {name: cpu_seconds(pid) for name, pid in self.cluster.items()}
        if self.operator_pid:
            out["operator"] = cpu_seconds(self.operator_pid)
        out["harness"] = time.process_time()
        out["machine"] = machine_busy_seconds()
        out["wall"] = time.monotonic()
        return out

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
        d = {k: after[k] - before[k] for k in before}
        wall = d.pop("wall")
        machine = d.pop("machine")
        d["other processes"] = machine - sum(d.values())
        return {
            "window_seconds": round(wall, 1),
            "machine_busy_cores": round(machine / wall, 2),
            "cpu_seconds": {k: round(v, 1) for k, v in sorted(d.items(), key=lambda kv: -kv[1])},
            "loadavg_end": Path("/proc/loadavg").read_text().split()[0],
        }


def scrape_total(url: str, metric: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(metric + "{") or line.startswith(metric + " ")
    )


def apiserver_requests(dev: DevCluster) -> float:
    return apiserver_requests_split(dev)["all"]


def apiserver_requests_split(dev: DevCluster) -> dict[str, float]:
    """``apiserver_request_total`` (all clients): ``all``, on ``kueue.x-k8s.io`` objects, and
    per ``VERB group/resource[/subresource]``."""
    text = dev.kubectl("get", "--raw", "/metrics", timeout=60).stdout
    out = {"all": 0.0, "kueue.x-k8s.io": 0.0}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        value = float(line.rsplit(" ", 1)[1])
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("{", 1)[1].rsplit("}", 1)[0]))
        out["all"] += value
        if labels.get("group") == "kueue.x-k8s.io":
            out["kueue.x-k8s.io"] += value
        resource = "/".join(
            x for x in (labels.get("group"), labels.get("resource"), labels.get("subresource")) if x
        )
        key = f"{labels.get('verb')} {resource}"
        out[key] = out.get(key, 0.0) + value
    return out


def per_job_delta(before: dict[str, float], after: dict[str, float], jobs: int) -> dict[str, float]:
    """Per-job increase of each counter of ``after`` (those below 0.05 per job left out)."""
    out = {k: (v - before.get(k, 0.0)) / jobs for k, v in after.items() if " " in k}
    return {k: round(v, 2) for k, v in sorted(out.items()) if v >= 0.05}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def workload_admitted(obj: dict[str, Any]) -> bool:
    """Kueue admitted the Workload: ``status.admission`` set and condition Admitted=True
    (read here independently of the operator's own reading in ``queueing.py``)."""
    status = obj.get("status") or {}
    admitted = any(
        c.get("type") == "Admitted" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return admitted and bool(status.get("admission"))


def metric_sum(text: str, metric: str) -> float:
    """Sum of every sample of ``metric`` (all label sets) in a Prometheus text exposition."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(metric + "{") or line.startswith(metric + " ")
    )


class KueueBench:
    """Kueue for the whole run (``KueueRunner`` of the dev tooling) with a quota that never
    makes a job wait: one ResourceFlavor (no node labels), one ClusterQueue admitting every
    namespace, a LocalQueue per case's namespace.

    Kueue's metrics endpoint is HTTPS with authentication and authorization (controller-runtime
    ``WithAuthenticationAndAuthorization``): it is scraped with the token of a ServiceAccount
    allowed ``get /metrics``."""

    CLUSTER_QUEUE = "kubetune-bench"
    FLAVOR = "kubetune-bench-flavor"
    LOCAL_QUEUE = "bench"
    METRICS_SA = "kubetune-bench-metrics"

    def __init__(self, dev: DevCluster, directory: Path) -> None:
        self.dev = dev
        self.runner = KueueRunner(dev, directory, dev.binaries)
        self.state: KueueState | None = None
        self.token = ""
        self.quota: dict[str, str] = {}

    @property
    def pid(self) -> int | None:
        return self.state.process.pid if self.state else None

    def apply(self, docs: list[dict[str, Any]]) -> None:
        self.dev.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs), timeout=120)

    def up(self, *, pods: int, gpus_per_pod: int) -> float:
        """Start Kueue; ``pods`` (all of one case's pods) sizes the quota, twice over.
        Returns the seconds ``up`` took."""
        t0 = time.monotonic()
        self.state = self.runner.up(timeout=300, die_with_parent=True)
        seconds = time.monotonic() - t0
        # job_doc: 1 CPU and 4Gi per pod
        self.quota = {
            "cpu": str(2 * pods),
            "memory": f"{2 * 4 * pods}Gi",
            "nvidia.com/gpu": str(2 * pods * gpus_per_pod),
        }
        self.apply(
            [
                {
                    "apiVersion": KUEUE_API_VERSION,
                    "kind": "ResourceFlavor",
                    "metadata": {"name": self.FLAVOR},
                },
                {
                    "apiVersion": KUEUE_API_VERSION,
                    "kind": "ClusterQueue",
                    "metadata": {"name": self.CLUSTER_QUEUE},
                    "spec": {
                        "namespaceSelector": {},
                        "resourceGroups": [
                            {
                                "coveredResources": list(self.quota),
                                "flavors": [
                                    {
                                        "name": self.FLAVOR,
                                        "resources": [
                                            {"name": k, "nominalQuota": v}
                                            for k, v in self.quota.items()
                                        ],
                                    }
                                ],
                            }
                        ],
                    },
                },
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": self.METRICS_SA, "namespace": "default"},
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRole",
                    "metadata": {"name": self.METRICS_SA},
                    "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}],
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": self.METRICS_SA},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": self.METRICS_SA,
                    },
                    "subjects": [
                        {
                            "kind": "ServiceAccount",
                            "name": self.METRICS_SA,
                            "namespace": "default",
                        }
                    ],
                },
            ]
        )
        self.dev.kubectl(
            "wait",
            "--for=condition=Active",
            f"clusterqueues.kueue.x-k8s.io/{self.CLUSTER_QUEUE}",
            "--timeout=60s",
            timeout=90,
        )
        self.token = self.dev.kubectl(
            "create", "token", self.METRICS_SA, "-n", "default", "--duration=3h"
        ).stdout.strip()
        return seconds

    def local_queue(self, namespace: str) -> None:
        self.apply(
            [
                {
                    "apiVersion": KUEUE_API_VERSION,
                    "kind": "LocalQueue",
                    "metadata": {"name": self.LOCAL_QUEUE, "namespace": namespace},
                    "spec": {"clusterQueue": self.CLUSTER_QUEUE},
                }
            ]
        )
        self.dev.kubectl(
            "wait",
            "--for=condition=Active",
            f"localqueues.kueue.x-k8s.io/{self.LOCAL_QUEUE}",
            "-n",
            namespace,
            "--timeout=60s",
            timeout=90,
        )

    def metrics(self) -> dict[str, float]:
        """Kueue's API requests and admission histograms (empty if not scrapeable)."""
        if self.state is None:
            return {}
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # Kueue's self-signed metrics certificate
        request = urllib.request.Request(
            f"https://127.0.0.1:{self.state.metrics_port}/metrics",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as resp:
                text = resp.read().decode()
        except OSError as exc:
            print(f"kueue metrics not scraped: {exc}", file=sys.stderr)
            return {}
        # No rest_client_requests_total here: Kueue's binary does not expose client-go's
        # request metrics, so its API requests are derived from the API server's counters.
        names = {
            "admission_wait_sum": "kueue_admission_wait_time_seconds_sum",
            "admission_wait_count": "kueue_admission_wait_time_seconds_count",
            "admission_attempt_sum": "kueue_admission_attempt_duration_seconds_sum",
            "admission_attempt_count": "kueue_admission_attempt_duration_seconds_count",
            "admitted": "kueue_admitted_workloads_total",
        }
        return {key: metric_sum(text, metric) for key, metric in names.items()}

    def down(self) -> None:
        """Stop Kueue. No purge: the whole dev cluster is torn down next."""
        if self.state is not None:
            self.runner.down(purge=False)
            self.state = None


class Watcher:
    """Records when jobs and their pods appear (and run), by local receive time."""

    def __init__(self, client: KubeClient, namespace: str, pods_per_job: int) -> None:
        self.client = client
        self.namespace = namespace
        self.n = pods_per_job
        self.job_added: dict[str, float] = {}
        self.pod_added: dict[str, dict[str, float]] = defaultdict(dict)
        self.pod_running: dict[str, dict[str, float]] = defaultdict(dict)
        self.tasks: list[asyncio.Task[None]] = []
        self.validation_added: dict[str, float] = {}
        self.validation_done: dict[str, float] = {}
        #: Kueue Workloads per job: first seen, first seen admitted, every uid seen
        self.workload_added: dict[str, float] = {}
        self.workload_admitted: dict[str, float] = {}
        self.workload_uids: dict[str, set[str]] = defaultdict(set)

    def first_created(self, job: str) -> float | None:
        pods = self.pod_added.get(job, {})
        return min(pods.values()) if pods else None

    async def _watch(self, path: str, params: dict[str, str], on: Any) -> None:
        listing = await self.client.request("GET", path, params=params)
        for item in listing.get("items", []):
            on("ADDED", item)
        rv = listing["metadata"]["resourceVersion"]
        session = self.client.session()
        while True:
            query = {**params, "watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "1"}
            async with session.get(
                self.client.credentials.server + path,
                params=query,
                headers=self.client.credentials.headers(),
                timeout=None,
            ) as resp:
                async for raw in resp.content:
                    if not raw.strip():
                        continue
                    event = json.loads(raw)
                    obj = event["object"]
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if event["type"] != "BOOKMARK":
                        on(event["type"], obj)

    def _on_job(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        self.job_added.setdefault(name, time.monotonic())

    def _on_workload(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        job = (meta.get("labels") or {}).get("kubetune.io/job-name")
        if not job:
            return
        now = time.monotonic()
        self.workload_uids[job].add(str(meta.get("uid")))
        self.workload_added.setdefault(job, now)
        if workload_admitted(obj):
            self.workload_admitted.setdefault(job, now)

    def _on_pod(self, kind: str, obj: dict[str, Any]) -> None:
        labels = obj["metadata"].get("labels") or {}
        if labels.get("kubetune.io/role", "worker") == "validation":
            job = labels.get("kubetune.io/job-name", "")
            now = time.monotonic()
            self.validation_added.setdefault(job, now)
            phase = (obj.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                self.validation_done.setdefault(job, now)
            return
        job = labels.get("kubetune.io/job-name")
        if not job or labels.get("kubetune.io/attempt", "1") != "1":
            return
        name = obj["metadata"]["name"]
        now = time.monotonic()
        self.pod_added[job].setdefault(name, now)
        if (obj.get("status") or {}).get("phase") == "Running":
            self.pod_running[job].setdefault(name, now)

    def start(self, with_jobs: bool, with_workloads: bool = False) -> None:
        ns = self.namespace
        if with_jobs:
            path = f"/apis/kubetune.io/v1alpha1/namespaces/{ns}/finetunejobs"
            self.tasks.append(asyncio.create_task(self._watch(path, {}, self._on_job)))
        if with_workloads:
            path = f"/apis/{KUEUE_API_VERSION}/namespaces/{ns}/workloads"
            params = {"labelSelector": "kubetune.io/job-name"}
            self.tasks.append(asyncio.create_task(self._watch(path, params, self._on_workload)))
        self.tasks.append(
            asyncio.create_task(
                self._watch(
                    f"/api/v1/namespaces/{ns}/pods",
                    {"labelSelector": "kubetune.io/job-name"},
                    self._on_pod,
                )
            )
        )

    def created(self, job: str) -> float | None:
        pods = self.pod_added.get(job, {})
        return max(pods.values()) if len(pods) >= self.n else None

    def running(self, job: str) -> float | None:
        pods = self.pod_running.get(job, {})
        return max(pods.values()) if len(pods) >= self.n else None

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def wait_all(watcher: Watcher, names: list[str], attr: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(getattr(watcher, attr)(n) is not None for n in names):
            return True
        await asyncio.sleep(0.1)
    return False


def summarize(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(pct(values, 50), 3),
        "p99": round(pct(values, 99), 3),
        "max": round(max(values), 3) if values else float("nan"),
        "mean": round(statistics.fmean(values), 3) if values else float("nan"),
    }


async def run_operator_case(
    dev: DevCluster,
    client: KubeClient,
    args: argparse.Namespace,
    workdir: Path,
    *,
    kubectl_apply: bool,
    ns: str,
    kueue: KueueBench | None = None,
    queued: bool = False,
) -> dict[str, Any]:
    """One case: a fresh operator process, a fresh namespace ``ns``, ``args.jobs`` jobs.
    ``queued``: the jobs name ``kueue``'s LocalQueue in ``runPolicy.queueName``."""
    dev.kubectl("create", "namespace", ns)
    dev.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    queue = None
    if queued:
        assert kueue is not None
        kueue.local_queue(ns)
        queue = kueue.LOCAL_QUEUE
    names = [f"job-{i:04d}" for i in range(args.jobs)]
    jobs_file = workdir / f"jobs-{ns}.yaml"
    jobs_file.write_text(
        yaml.safe_dump_all([job_doc(n, ns, args.pods, args.gpus, queue) for n in names])
    )
    metrics_port = free_port()
    env = dict(os.environ)
    env.pop("KUBECONFIG", None)
    env.update(
        {
            "KUBETUNE_OPERATOR_VALIDATION_POD_ANNOTATIONS": json.dumps(
                {manifests.EXIT_CODE_ANNOTATION: "0"}
            ),
            "KUBETUNE_OPERATOR_VALIDATION_ENABLED": "true" if args.validation else "false",
            "KUBETUNE_OPERATOR_TRAINER_IMAGE": "kubetune.invalid/trainer:bench",
            "KUBETUNE_OPERATOR_LEASE_NAMESPACE": "default",
        }
    )
    log = (workdir / f"operator-{ns}.log").open("wb")
    prefix = [sys.executable]
    if args.profile:
        prefix += ["-m", "cProfile", "-o", str(args.profile)]
    for key, value in args.set or []:
        env[f"KUBETUNE_OPERATOR_{key.upper()}"] = value
    proc = subprocess.Popen(
        [
            *prefix,
            "-m",
            "kubetune.cli.main",
            "operator",
            "run",
            "--kubeconfig",
            str(dev.kubeconfig),
            "--metrics-port",
            str(metrics_port),
            "--id",
            "bench",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
    )
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if scrape_total(metrics_url, "kubetune_operator_leader") == 1:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"operator did not start; see operator-{ns}.log")
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)  # initial lists done, idle
        watcher = Watcher(client, ns, args.pods)
        watcher.start(with_jobs=True, with_workloads=kueue is not None)
        await asyncio.sleep(1)
        account = CpuAccount(dev, proc.pid, kueue.pid if kueue else None)
        usage0 = account.sample()
        cpu0 = cpu_seconds(proc.pid)
        rss0 = rss_mib(proc.pid)
        op_req0 = scrape_total(metrics_url, "kubetune_operator_api_requests_total")
        api_split0 = apiserver_requests_split(dev)
        kueue0 = kueue.metrics() if kueue else {}
        t0 = time.monotonic()
        if kubectl_apply:
            # In a thread: the watchers must time-stamp events while kubectl runs (a blocking
            # call here would hold them all until the apply ends).
            await asyncio.to_thread(dev.kubectl, "apply", "-f", str(jobs_file), timeout=600)
        else:
            # All at once: N clients POST their job concurrently (kubectl apply of a list is
            # sequential, ~0.18 s per object here, which would spread the burst out).
            docs = list(yaml.safe_load_all(jobs_file.read_text()))
            path = f"/apis/kubetune.io/v1alpha1/namespaces/{ns}/finetunejobs"
            limit = asyncio.Semaphore(50)

            async def post(doc: dict[str, Any]) -> None:
                async with limit:
                    await client.create(path, doc)

            await asyncio.gather(*(post(d) for d in docs))
        t_applied = time.monotonic()
        created_ok = await wait_all(watcher, names, "created", args.timeout)
        t_created = time.monotonic()
        running_ok = await wait_all(watcher, names, "running", args.timeout)
        t_running = time.monotonic()
        await asyncio.sleep(2)  # let the last status writes land
        cpu1 = cpu_seconds(proc.pid)
        usage = CpuAccount.delta(usage0, account.sample())
        api_count = scrape_total(
            metrics_url, "kubetune_operator_api_request_duration_seconds_count"
        )
        api_sum = scrape_total(metrics_url, "kubetune_operator_api_request_duration_seconds_sum")
        op_req1 = scrape_total(metrics_url, "kubetune_operator_api_requests_total")
        api_split1 = apiserver_requests_split(dev)
        kueue1 = kueue.metrics() if kueue else {}
        peak = peak_rss_mib(proc.pid)
        reconciles = scrape_total(metrics_url, "kubetune_reconcile_duration_seconds_count")
        reconcile_sum = scrape_total(metrics_url, "kubetune_reconcile_duration_seconds_sum")
        by_verb: dict[str, float] = {}
        with urllib.request.urlopen(metrics_url, timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                m = re.match(
                    r'kubetune_operator_api_requests_total\{code="(\d+)",resource="([^"]+)",'
                    r'verb="(\w+)"\} ([\d.e+]+)',
                    line,
                )
                if m:
                    key = f"{m.group(3)} {m.group(2)}"
                    by_verb[key] = by_verb.get(key, 0) + float(m.group(4))
        await watcher.stop()
        to_created = [
            t - watcher.job_added[n]
            for n in names
            if (t := watcher.created(n)) is not None and n in watcher.job_added
        ]
        to_running = [
            t - watcher.job_added[n]
            for n in names
            if (t := watcher.running(n)) is not None and n in watcher.job_added
        ]

        def stage(a: dict[str, float] | Any, b: dict[str, float] | Any) -> dict[str, float]:
            values = []
            for n in names:
                start = a(n) if callable(a) else a.get(n)
                end = b(n) if callable(b) else b.get(n)
                if start is not None and end is not None:
                    values.append(end - start)
            return summarize(values)

        breakdown = {
            "job_added_to_validation_pod_created": stage(
                watcher.job_added, watcher.validation_added
            ),
            "validation_pod_created_to_completed (scheduler+KWOK)": stage(
                watcher.validation_added, watcher.validation_done
            ),
            "validation_completed_to_first_gang_pod (operator)": stage(
                watcher.validation_done, watcher.first_created
            ),
            "first_to_last_gang_pod_created": stage(watcher.first_created, watcher.created),
            "gang_created_to_running (scheduler+KWOK)": stage(watcher.created, watcher.running),
        }
        if queued:
            wl_added, wl_admitted = watcher.workload_added, watcher.workload_admitted
            breakdown = {
                "job_added_to_validation_pod_created": breakdown[
                    "job_added_to_validation_pod_created"
                ],
                "validation_pod_created_to_completed (scheduler+KWOK)": breakdown[
                    "validation_pod_created_to_completed (scheduler+KWOK)"
                ],
                "validation_completed_to_workload_created (operator)": stage(
                    watcher.validation_done, wl_added
                ),
                "workload_created_to_admitted (Kueue)": stage(wl_added, wl_admitted),
                "admitted_to_first_gang_pod (operator)": stage(wl_admitted, watcher.first_created),
                "first_to_last_gang_pod_created": breakdown["first_to_last_gang_pod_created"],
                "gang_created_to_running (scheduler+KWOK)": breakdown[
                    "gang_created_to_running (scheduler+KWOK)"
                ],
            }
            if not args.validation:
                breakdown = {k: v for k, v in breakdown.items() if "validation" not in k}
        kueue_result: dict[str, Any] = {}
        if kueue is not None:
            delta = {k: kueue1[k] - kueue0[k] for k in kueue1 if k in kueue0}
            kueue_result = {
                "queue_name": queue,
                "cluster_queue_quota": kueue.quota,
                "kueue_admitted_workloads": delta.get("admitted"),
                "kueue_admission_wait_mean_s (Kueue's histogram)": round(
                    delta["admission_wait_sum"] / delta["admission_wait_count"], 3
                )
                if delta.get("admission_wait_count")
                else None,
                "kueue_admission_attempts": delta.get("admission_attempt_count"),
                "kueue_admission_attempt_mean_ms": round(
                    1000 * delta["admission_attempt_sum"] / delta["admission_attempt_count"], 1
                )
                if delta.get("admission_attempt_count")
                else None,
                "apiserver_requests_per_job_on_kueue_objects": round(
                    (api_split1["kueue.x-k8s.io"] - api_split0["kueue.x-k8s.io"]) / args.jobs, 2
                ),
            }
            if queued:
                uids = watcher.workload_uids
                kueue_result.update(
                    {
                        "job_to_workload_created_s": stage(watcher.job_added, wl_added),
                        "workload_created_to_admitted_s": stage(wl_added, wl_admitted),
                        "admitted_to_all_pods_created_s": stage(wl_admitted, watcher.created),
                        "jobs_with_a_workload": sum(1 for n in names if n in wl_added),
                        "jobs_admitted": sum(1 for n in names if n in wl_admitted),
                        "jobs_with_several_workloads": sorted(
                            n for n in names if len(uids.get(n, ())) > 1
                        ),
                        "jobs_never_admitted": sorted(n for n in names if n not in wl_admitted)[
                            :10
                        ],
                    }
                )
        return {
            "variant": "kueue" if queued else "plain",
            **({"kueue": kueue_result} if kueue_result else {}),
            "jobs": args.jobs,
            "pods_per_job": args.pods,
            "stages_s": breakdown if args.validation else {},
            "validation": args.validation,
            "all_created": created_ok,
            "all_running": running_ok,
            "submission": "kubectl apply -f (sequential)"
            if kubectl_apply
            else "concurrent API creates (50 in flight)",
            "submit_seconds": round(t_applied - t0, 3),
            "job_to_all_pods_created_s": summarize(to_created),
            "job_to_all_pods_running_s": summarize(to_running),
            "batch_apply_start_to_last_pod_created_s": round(t_created - t0, 3),
            "batch_apply_start_to_last_pod_running_s": round(t_running - t0, 3),
            "operator_cpu_seconds": round(cpu1 - cpu0, 2),
            "cpu_usage": usage,
            "operator_api_request_mean_ms": round(1000 * api_sum / max(1, api_count), 1),
            "reconciles_per_job": round(reconciles / args.jobs, 1),
            "reconcile_mean_ms": round(1000 * reconcile_sum / max(1, reconciles), 1),
            "operator_rss_before_mib": round(rss0, 1),
            "operator_peak_rss_mib": round(peak, 1),
            "operator_api_requests_per_job": round((op_req1 - op_req0) / args.jobs, 2),
            "operator_api_requests_by_kind_per_job": {
                k: round(v / args.jobs, 2) for k, v in sorted(by_verb.items())
            },
            "apiserver_requests_per_job_all_clients": round(
                (api_split1["all"] - api_split0["all"]) / args.jobs, 1
            ),
            "apiserver_requests_per_job_by_kind_all_clients": per_job_delta(
                api_split0, api_split1, args.jobs
            ),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


async def run_baseline_case(
    dev: DevCluster, client: KubeClient, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """A shell loop of ``kubectl create -f job-i.yaml`` with the same objects per job."""
    ns = "bench-baseline"
    dev.kubectl("create", "namespace", ns)
    settings = OperatorSettings(
        trainer_image="kubetune.invalid/trainer:bench", leader_election=False
    )
    names = [f"job-{i:04d}" for i in range(args.jobs)]
    files = []
    for i, name in enumerate(names):
        doc = job_doc(name, ns, args.pods, args.gpus)
        doc["metadata"]["uid"] = f"00000000-0000-0000-0000-{i:012d}"
        job = FineTuneJob.model_validate(doc)
        resolved = resolve(job, attempt=1)
        objs = [render_config_map(job, resolved), render_service(job, settings)]
        for rank in range(args.pods):
            pod = render_worker_pod(job, 1, rank, settings)
            pod["spec"].pop("schedulingGates")
            objs.append(pod)
        for obj in objs:  # no owner exists: a plain script owns nothing
            obj["metadata"].pop("ownerReferences", None)
        path = workdir / f"baseline-{name}.yaml"
        path.write_text(yaml.safe_dump_all(objs))
        files.append(path)
    watcher = Watcher(client, ns, args.pods)
    watcher.start(with_jobs=False)
    await asyncio.sleep(1)
    api_req0 = apiserver_requests(dev)
    account = CpuAccount(dev, None)
    usage0 = account.sample()
    started: dict[str, float] = {}
    t0 = time.monotonic()

    def loop() -> None:
        for name, path in zip(names, files, strict=True):
            started[name] = time.monotonic()
            dev.kubectl("create", "-f", str(path), "-n", ns, timeout=120)

    await asyncio.to_thread(loop)
    created_ok = await wait_all(watcher, names, "created", args.timeout)
    t_created = time.monotonic()
    running_ok = await wait_all(watcher, names, "running", args.timeout)
    t_running = time.monotonic()
    usage = CpuAccount.delta(usage0, account.sample())
    api_req1 = apiserver_requests(dev)
    await watcher.stop()
    created = {n: t for n in names if (t := watcher.created(n)) is not None}
    running = {n: t for n in names if (t := watcher.running(n)) is not None}
    from_own_start = [t - started[n] for n, t in created.items()]
    from_batch = [t - t0 for t in created.values()]
    from_batch_running = [t - t0 for t in running.values()]
    return {
        "jobs": args.jobs,
        "all_created": created_ok,
        "all_running": running_ok,
        "job_kubectl_start_to_all_pods_created_s": summarize(from_own_start),
        "batch_start_to_job_pods_created_s": summarize(from_batch),
        "batch_start_to_job_pods_running_s": summarize(from_batch_running),
        "batch_start_to_last_pod_created_s": round(t_created - t0, 3),
        "batch_start_to_last_pod_running_s": round(t_running - t0, 3),
        "apiserver_requests_per_job_all_clients": round((api_req1 - api_req0) / args.jobs, 1),
        "cpu_usage": usage,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="kubetune-bench-"))
    dev = DevCluster(workdir / "cluster")
    needed_gpus = args.jobs * args.pods * args.gpus  # cases run one after the other
    extra_nodes = max(0, -(-needed_gpus // 8) - 4)
    state = dev.up(build=True, timeout=180)
    kueue: KueueBench | None = None
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpus": os.cpu_count()},
        "cluster": state.versions,
        "settings": {
            "jobs": args.jobs,
            "pods_per_job": args.pods,
            "gpus_per_pod": args.gpus,
            "validation": args.validation,
            "variants": args.variants,
            "submissions": args.submissions,
            "rounds": args.rounds,
            "timeout_s": args.timeout,
            "operator_settings": dict(args.set or []),
        },
    }
    try:
        specs = [
            manifests.NodeSpec(f"kwok-bench-{i}", "gpu", cpu="96", memory="1024Gi", gpus=8)
            for i in range(extra_nodes)
        ]
        if specs:
            dev.kubectl("apply", "-f", "-", input=manifests.nodes_yaml(specs), timeout=120)
        dev.kubectl(
            "wait", "--for=condition=Ready", "nodes", "--all", "--timeout=120s", timeout=150
        )
        dev.kubectl(
            "apply", "--server-side", "-f", str(REPO / "crds/kubetune.io_finetunejobs.yaml")
        )
        for _ in range(50):  # the CRD has no status at all for a moment
            if not dev.kubectl(
                "wait",
                "--for=condition=Established",
                "crd/finetunejobs.kubetune.io",
                check=False,
            ).returncode:
                break
            time.sleep(0.2)
        result["gpu_nodes"] = 4 + extra_nodes
        if "kueue" in args.variants:
            kueue = KueueBench(dev, workdir / "kueue")
            up_seconds = kueue.up(pods=args.jobs * args.pods, gpus_per_pod=args.gpus)
            result["kueue"] = {
                "version": dev.binaries.versions.kueue,
                "up_seconds": round(up_seconds, 1),
                "cluster_queue": kueue.CLUSTER_QUEUE,
                "nominal_quota": kueue.quota,
                "settings": "one ResourceFlavor without node labels; ClusterQueue with "
                "namespaceSelector {} and the default queueing strategy (BestEffortFIFO), "
                "no cohort, no preemption, no admission checks; Kueue's Configuration from "
                "kubetune.devcluster.kueue (no waitForPodsReady, integrations batch/job only)",
                "running_during": "every operator case (the plain variant too: the operator "
                "detects Kueue at startup and watches Workloads in both variants)",
            }
        async with KubeClient(Credentials.load(str(dev.kubeconfig))) as client:
            for round_ in range(1, args.rounds + 1):
                for submission in args.submissions:
                    for variant in args.variants:
                        key = f"operator_{submission}"
                        key += "" if variant == "plain" else f"_{variant}"
                        key += "" if round_ == 1 else f"_r{round_}"
                        ns = f"bench-{submission}-{variant}-{round_}"
                        print(f"case {key} in namespace {ns}", file=sys.stderr)
                        result[key] = await run_operator_case(
                            dev,
                            client,
                            args,
                            workdir,
                            kubectl_apply=submission == "apply",
                            ns=ns,
                            kueue=kueue,
                            queued=variant == "kueue",
                        )
                        result[key]["round"] = round_
                        # Free the GPUs and the quota for the next case (garbage collection
                        # deletes the pods and the Workloads).
                        dev.kubectl(
                            "delete", "namespace", ns, "--wait=true", "--timeout=300s", timeout=330
                        )
            for key, case in list(result.items()):
                if key.startswith("operator_") and case.get("variant") == "kueue":
                    plain = result.get(key.replace("_kueue", "", 1))
                    if plain is not None:
                        case["kueue"].update(compare_to_plain(plain, case))
            if args.baseline:
                result["baseline_kubectl_loop"] = await run_baseline_case(
                    dev, client, args, workdir
                )
    finally:
        if kueue is not None:
            kueue.down()
        dev.down()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir} (operator.log, manifests)", file=sys.stderr)
    return result


KUEUE_REQUESTS = "kueue_requests_per_job_on_kueue_objects (all clients less the operator's)"


def compare_to_plain(plain: dict[str, Any], queued: dict[str, Any]) -> dict[str, Any]:
    """Kueue's own API requests, derived: Kueue's binary exposes no client request counter, and
    it shares the API server with everyone. The extra requests per job at the API server (all
    clients) of the queued case over the plain case of the same round, less the operator's
    extra requests, are Kueue's (plus noise from other clients: scheduler, KWOK, controllers)."""
    extra_all = (
        queued["apiserver_requests_per_job_all_clients"]
        - plain["apiserver_requests_per_job_all_clients"]
    )
    extra_operator = (
        queued["operator_api_requests_per_job"] - plain["operator_api_requests_per_job"]
    )
    a = plain["apiserver_requests_per_job_by_kind_all_clients"]
    b = queued["apiserver_requests_per_job_by_kind_all_clients"]
    by_kind = {k: round(b.get(k, 0.0) - a.get(k, 0.0), 2) for k in sorted({*a, *b})}
    operator_on_kueue = sum(
        v
        for k, v in queued["operator_api_requests_by_kind_per_job"].items()
        if k.split(" ")[1].split("/")[0] in ("workloads", "resourceflavors", "priorityclasses")
    )
    return {
        KUEUE_REQUESTS: round(
            queued["kueue"]["apiserver_requests_per_job_on_kueue_objects"] - operator_on_kueue, 2
        ),
        "apiserver_extra_requests_per_job_vs_plain (all clients)": round(extra_all, 1),
        "operator_extra_requests_per_job_vs_plain": round(extra_operator, 2),
        "kueue_api_requests_per_job (derived)": round(extra_all - extra_operator, 1),
        "apiserver_extra_requests_per_job_vs_plain_by_kind": {
            k: v for k, v in by_kind.items() if abs(v) >= 0.1
        },
    }


def kueue_markdown(result: dict[str, Any]) -> str:
    """The plain-vs-Kueue table (per case, p50 / p99 / max in seconds)."""

    def cell(stats: dict[str, float] | None) -> str:
        if not stats:
            return "-"
        return f"{stats['p50']:.2f} / {stats['p99']:.2f} / {stats['max']:.2f}"

    lines = [
        "| case | job -> Workload created | Workload -> admitted (Kueue) | admitted -> all "
        "gang pods created | job -> all pods created | job -> all pods Running | operator "
        "req/job | Kueue req/job on Kueue objects | Kueue CPU s | operator CPU s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, case in result.items():
        if not key.startswith("operator_") or not isinstance(case, dict):
            continue
        k = case.get("kueue") or {}
        cpu = case["cpu_usage"]["cpu_seconds"]
        lines.append(
            f"| {key} | {cell(k.get('job_to_workload_created_s'))} | "
            f"{cell(k.get('workload_created_to_admitted_s'))} | "
            f"{cell(k.get('admitted_to_all_pods_created_s'))} | "
            f"{cell(case['job_to_all_pods_created_s'])} | "
            f"{cell(case['job_to_all_pods_running_s'])} | "
            f"{case['operator_api_requests_per_job']:.1f} | "
            f"{k.get(KUEUE_REQUESTS, '-')} | {cpu.get('kueue', '-')} | "
            f"{case['operator_cpu_seconds']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--pods", type=int, default=2, help="pods (nodes) per job")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per pod")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--no-validation", dest="validation", action="store_false")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false")
    parser.add_argument(
        "--submissions",
        default="apply,burst",
        type=lambda v: [x for x in v.split(",") if x],
        help="apply: one `kubectl apply -f` of all jobs; burst: concurrent API creates",
    )
    parser.add_argument(
        "--variants",
        default="plain,kueue",
        type=lambda v: [x for x in v.split(",") if x],
        help="plain: jobs without runPolicy.queueName; kueue: with a LocalQueue (Kueue runs "
        "for the whole run when listed)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat every case, interleaved by variant"
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--profile", type=Path, default=None, help="cProfile the operator")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--set",
        nargs=2,
        action="append",
        metavar=("SETTING", "VALUE"),
        help="operator setting, e.g. --set workers 32",
    )
    args = parser.parse_args()
    unknown = set(args.variants) - {"plain", "kueue"}
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}: use plain and/or kueue")
    result = asyncio.run(main_async(args))
    text = json.dumps(result, indent=2)
    print(text)
    if "kueue" in args.variants:
        print(kueue_markdown(result), file=sys.stderr)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
