"""Operator benchmark: apply N FineTuneJobs at once to the local control plane.

Measures, in one run on one machine:

* per job: time from the job's creation (its ADDED watch event) to ALL its gang pods existing,
  and to all of them Running; p50/p99; and the batch span (``kubectl apply`` start -> last pod);
* the operator process's CPU seconds and peak RSS (``/proc``);
* API requests per job: the operator's own client (its ``kubetune_operator_api_requests_total``
  counter; kopf's few long-lived list/watch calls are per resource kind, not per job) and the
  API server's ``apiserver_request_total`` (all clients: scheduler, KWOK, controllers too);
* a baseline in the same run: a naive loop of ``kubectl create`` per job of the same objects
  (ConfigMap, Service, N pods; no validation, no gate), timed the same way.

Validation pods are completed by KWOK through the operator's generic
``validation_pod_annotations`` setting (``kwok.kubetune.io/exit-code: "0"``): the trainer is
not in the loop, the operator's full path (validate -> gang -> ungate -> running) is.

Usage: ``python benchmarks/operator/bench_operator.py --jobs 200 [--out RESULTS.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
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
from kubetune.devcluster.procs import free_port
from kubetune_operator.kube import Credentials, KubeClient
from kubetune_operator.render import render_config_map, render_service, render_worker_pod
from kubetune_operator.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def job_doc(name: str, namespace: str, pods: int, gpus: int) -> dict[str, Any]:
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
            "runPolicy": {"schedulingTimeoutSeconds": 600},
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

    def __init__(self, dev: DevCluster, operator_pid: int | None) -> None:
        state = dev.load_state()
        self.cluster = {p.name: p.pid for p in (state.processes if state else [])}
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
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
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
    text = dev.kubectl("get", "--raw", "/metrics", timeout=60).stdout
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("apiserver_request_total{")
    )


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


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

    def start(self, with_jobs: bool) -> None:
        ns = self.namespace
        if with_jobs:
            path = f"/apis/kubetune.io/v1alpha1/namespaces/{ns}/finetunejobs"
            self.tasks.append(asyncio.create_task(self._watch(path, {}, self._on_job)))
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
) -> dict[str, Any]:
    dev.kubectl("create", "namespace", ns)
    dev.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    names = [f"job-{i:04d}" for i in range(args.jobs)]
    jobs_file = workdir / "jobs.yaml"
    jobs_file.write_text(yaml.safe_dump_all([job_doc(n, ns, args.pods, args.gpus) for n in names]))
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
    log = (workdir / "operator.log").open("wb")
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
                raise RuntimeError("operator did not start; see operator.log")
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)  # initial lists done, idle
        watcher = Watcher(client, ns, args.pods)
        watcher.start(with_jobs=True)
        await asyncio.sleep(1)
        account = CpuAccount(dev, proc.pid)
        usage0 = account.sample()
        cpu0 = cpu_seconds(proc.pid)
        rss0 = rss_mib(proc.pid)
        op_req0 = scrape_total(metrics_url, "kubetune_operator_api_requests_total")
        api_req0 = apiserver_requests(dev)
        t0 = time.monotonic()
        if kubectl_apply:
            dev.kubectl("apply", "-f", str(jobs_file), timeout=600)
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
        api_req1 = apiserver_requests(dev)
        peak = peak_rss_mib(proc.pid)
        reconciles = scrape_total(metrics_url, "kubetune_reconcile_duration_seconds_count")
        reconcile_sum = scrape_total(metrics_url, "kubetune_reconcile_duration_seconds_sum")
        by_verb = {}
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
            watcher.created(n) - watcher.job_added[n]
            for n in names
            if watcher.created(n) is not None and n in watcher.job_added
        ]
        to_running = [
            watcher.running(n) - watcher.job_added[n]
            for n in names
            if watcher.running(n) is not None and n in watcher.job_added
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
        return {
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
            "apiserver_requests_per_job_all_clients": round((api_req1 - api_req0) / args.jobs, 1),
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
    from_own_start = [watcher.created(n) - started[n] for n in names if watcher.created(n)]
    from_batch = [watcher.created(n) - t0 for n in names if watcher.created(n)]
    from_batch_running = [watcher.running(n) - t0 for n in names if watcher.running(n)]
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
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpus": os.cpu_count()},
        "cluster": state.versions,
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
        async with KubeClient(Credentials.load(str(dev.kubeconfig))) as client:
            for submission in args.submissions:
                ns = f"bench-{submission}"
                result[f"operator_{submission}"] = await run_operator_case(
                    dev, client, args, workdir, kubectl_apply=submission == "apply", ns=ns
                )
                # Free the GPUs for the next case (garbage collection deletes the pods).
                dev.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=300s", timeout=330)
            if args.baseline:
                result["baseline_kubectl_loop"] = await run_baseline_case(
                    dev, client, args, workdir
                )
    finally:
        dev.down()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir} (operator.log, manifests)", file=sys.stderr)
    return result


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
    result = asyncio.run(main_async(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
