"""Helpers for the operator's e2e tests: run the operator as a real separate process with a
least-privilege ServiceAccount token, drive jobs through kubectl, serve progress documents
over real HTTP.

The operator gets test-friendly *configuration* only (short backoffs and leases, a progress
URL template pointing at a local HTTP server keyed by the rank-0 pod's IP); its code is
the production code.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.devcluster import simulate
from kubetune.devcluster.testing import Cluster, wait_until

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "kubetune.io_finetunejobs.yaml"
#: installed with the operator as the chart does, so its pipeline controller runs
PIPELINE_CRD = REPO / "crds" / "kubetune.io_finetunepipelines.yaml"
RBAC = REPO / "operator" / "kubetune_operator" / "rbac.yaml"
OPERATOR_NAMESPACE = "kubetune-system"
SERVICE_ACCOUNT = "kubetune-operator"
TRAINER_IMAGE = "kubetune.invalid/trainer:e2e"  # never pulled: KWOK fakes containers

#: Operator configuration for tests: everything that waits is short.
TEST_SETTINGS = {
    "BACKOFF_BASE_SECONDS": "1",
    "BACKOFF_MAX_SECONDS": "4",
    "UNSCHEDULABLE_RETRY_SECONDS": "60",
    "NODE_LOST_GRACE_SECONDS": "1",
    "PROGRESS_INTERVAL_SECONDS": "1",
    "PROGRESS_TIMEOUT_SECONDS": "1",
    "LEASE_DURATION_SECONDS": "4",
    "RENEW_DEADLINE_SECONDS": "3",
    "RETRY_PERIOD_SECONDS": "0.5",
    "VALIDATION_TIMEOUT_SECONDS": "120",
    "TERMINATION_GRACE_PERIOD_SECONDS": "5",
    "TRAINER_IMAGE": TRAINER_IMAGE,
    "LOG_LEVEL": "INFO",
    # Jobs may name ServiceAccounts e2e-*: one that does not exist shows how a refused
    # pod create is reported.
    "ALLOWED_SERVICE_ACCOUNTS": "default,e2e-*",
    "CAPACITY_RECHECK_SECONDS": "1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- kubectl conveniences --------------------------------------------------------------------
def kget(cluster: Cluster, *args: str, namespace: str | None = None) -> Any:
    proc = cluster.kubectl("get", *args, "-o", "json", namespace=namespace)
    return json.loads(proc.stdout)


def job(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(kget(cluster, "finetunejob", name, namespace=namespace))


def job_status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(job(cluster, namespace, name).get("status") or {})


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def pods(cluster: Cluster, namespace: str, job_name: str, **labels: str) -> list[dict[str, Any]]:
    selector = ",".join(
        [f"kubetune.io/job-name={job_name}", *(f"kubetune.io/{k}={v}" for k, v in labels.items())]
    )
    items = kget(cluster, "pods", "-l", selector, namespace=namespace)["items"]
    return sorted(items, key=lambda p: p["metadata"]["name"])


def worker_pods(
    cluster: Cluster, namespace: str, job_name: str, attempt: int | None = None
) -> list[dict[str, Any]]:
    labels = {"role": "worker"}
    if attempt is not None:
        labels["attempt"] = str(attempt)
    return pods(cluster, namespace, job_name, **labels)


def events(cluster: Cluster, namespace: str, job_name: str) -> list[dict[str, Any]]:
    items = kget(
        cluster,
        "events",
        "--field-selector",
        f"involvedObject.kind=FineTuneJob,involvedObject.name={job_name}",
        namespace=namespace,
    )["items"]
    return list(items)


def manifest(name: str, namespace: str, **overrides: Any) -> dict[str, Any]:
    """A small LoRA job: 2 pods x 8 GPUs, data from the image, output to S3 (credentials by
    Secret reference). Nested dicts in ``overrides`` merge one level deep."""
    spec: dict[str, Any] = {
        "method": "lora",
        "model": {"uri": "/models/tiny-llama"},
        "dataset": {"train": "/data/train.jsonl", "format": "chat"},
        "hyperparameters": {"globalBatchSize": 32, "microBatchSize": 2, "learningRate": 2e-4},
        "resources": {"nodes": 2, "gpusPerNode": 8, "cpu": "8", "memory": "64Gi"},
        "output": {"uri": f"s3://results/{name}", "credentialsSecretRef": {"name": "s3-creds"}},
        "runPolicy": {"backoffLimit": 3, "schedulingTimeoutSeconds": 10},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def apply(cluster: Cluster, doc: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))


def patch_job(cluster: Cluster, namespace: str, name: str, patch: dict[str, Any]) -> None:
    cluster.kubectl(
        "patch", "finetunejob", name, "--type=merge", "-p", json.dumps(patch), namespace=namespace
    )


def wait_phase(
    cluster: Cluster, namespace: str, name: str, phase: str, timeout: float = 60
) -> dict[str, Any]:
    result: dict[str, Any] = wait_until(
        lambda: (s := job_status(cluster, namespace, name)).get("phase") == phase and s,
        timeout=timeout,
        what=f"{namespace}/{name} phase {phase}",
    )
    return result


def restricted_namespace(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl(
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
        "--overwrite",
    )
    cluster.kubectl(
        "create",
        "secret",
        "generic",
        "s3-creds",
        "--from-literal=AWS_ACCESS_KEY_ID=test",
        "--from-literal=AWS_SECRET_ACCESS_KEY=test",
        namespace=namespace,
    )


def finish_validation(
    cluster: Cluster, namespace: str, name: str, exit_code: int = 0, message: str | None = None
) -> None:
    """Play the trainer's ``--validate-only`` run: its pod exits with ``exit_code``; returns
    once the operator has seen the verdict (it deletes a passed validation pod at once, so
    waiting on the pod itself would race)."""
    pod = wait_until(
        lambda: pods(cluster, namespace, name, role="validation"),
        timeout=30,
        what=f"validation pod of {name}",
    )[-1]
    simulate.finish_pod(
        pod["metadata"]["name"],
        namespace,
        exit_code,
        message=message,
        wait=False,
        kubeconfig=cluster.kubeconfig,
        kubectl=cluster.kubectl_path,
    )
    wait_until(
        lambda: (
            condition(job_status(cluster, namespace, name), "Validated").get("status")
            in ("True", "False")
        ),
        timeout=30,
        what=f"the validation verdict on {name}",
    )


def start_running(cluster: Cluster, namespace: str, name: str, **overrides: Any) -> dict[str, Any]:
    """Create a job, pass validation, wait until its gang runs; returns the status."""
    apply(cluster, manifest(name, namespace, **overrides))
    finish_validation(cluster, namespace, name)
    return wait_phase(cluster, namespace, name, "Running", timeout=60)


def finish_pod(cluster: Cluster, namespace: str, pod: str, code: int, **kw: Any) -> None:
    """The trainer in ``pod`` exits with ``code``. Does not wait for the pod: the operator may
    delete it (a failed gang) before a watcher sees its final phase -- wait on the job."""
    kw.setdefault("wait", False)
    simulate.finish_pod(
        pod, namespace, code, kubeconfig=cluster.kubeconfig, kubectl=cluster.kubectl_path, **kw
    )


# -- least-privilege credentials ---------------------------------------------------------------
def install(cluster: Cluster, workdir: Path) -> Path:
    """Install the CRD and the operator's RBAC; return a kubeconfig holding a token of the
    operator's ServiceAccount (bound to rbac.yaml, not cluster-admin)."""
    for crd, name in ((CRD, "finetunejobs"), (PIPELINE_CRD, "finetunepipelines")):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
        # kubectl wait errors out (instead of waiting) while a new CRD has no conditions yet.
        wait_until(
            lambda name=name: (
                cluster.kubectl(
                    "wait",
                    "--for=condition=Established",
                    f"crd/{name}.kubetune.io",
                    "--timeout=60s",
                    check=False,
                ).returncode
                == 0
            ),
            timeout=90,
            what=f"the {name} CRD to be established",
        )
    if cluster.kubectl("get", "namespace", OPERATOR_NAMESPACE, check=False).returncode:
        cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE)
    cluster.kubectl("apply", "-f", str(RBAC))
    token = cluster.kubectl(
        "create", "token", SERVICE_ACCOUNT, "--duration=4h", namespace=OPERATOR_NAMESPACE
    ).stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    ca = admin["clusters"][0]["cluster"]["certificate-authority-data"]
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "e2e", "cluster": {"server": cluster.server, "certificate-authority-data": ca}}
        ],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "e2e", "user": SERVICE_ACCOUNT}}],
        "current-context": "operator",
    }
    path = workdir / "operator-sa.kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


# -- the operator process ----------------------------------------------------------------------
class OperatorProcess:
    """One operator replica: ``kubetune operator run`` as a separate process."""

    def __init__(
        self, kubeconfig: Path, log_dir: Path, name: str, env: dict[str, str] | None = None
    ) -> None:
        self.kubeconfig = kubeconfig
        self.name = name
        self.metrics_port = free_port()
        self.log_path = log_dir / f"operator-{name}.log"
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = dict(os.environ)
        env.pop("KUBECONFIG", None)
        env.update({f"KUBETUNE_OPERATOR_{k}": v for k, v in TEST_SETTINGS.items()})
        env.update(self.extra_env)
        env["KUBETUNE_OPERATOR_LEASE_NAMESPACE"] = OPERATOR_NAMESPACE
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubetune.cli.main",
                "operator",
                "run",
                "--kubeconfig",
                str(self.kubeconfig),
                "--metrics-port",
                str(self.metrics_port),
                "--id",
                self.name,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read().decode()

    def is_leader(self) -> bool:
        try:
            return "kubetune_operator_leader 1.0" in self.metrics()
        except OSError:
            return False

    def wait_ready(self, timeout: float = 60) -> None:
        wait_until(
            lambda: self.is_leader() or not self.alive,
            timeout=timeout,
            what=f"operator {self.name} to lead",
        )
        assert self.alive, f"operator {self.name} exited:\n{self.log_tail()}"

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no lease release (a crash)."""
        if self.proc is not None and self.alive:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM and wait: a clean shutdown that hands the lease over."""
        if self.proc is None:
            return None
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def lease_holder(cluster: Cluster) -> str:
    proc = cluster.kubectl(
        "get",
        "lease",
        "kubetune-operator",
        "-o",
        "jsonpath={.spec.holderIdentity}",
        namespace=OPERATOR_NAMESPACE,
        check=False,
    )
    return proc.stdout.strip()


# -- progress documents over real HTTP ---------------------------------------------------------
class ProgressServer:
    """Serves ``GET /<pod ip>/progress`` -> the document registered for that pod IP.

    The operator is configured with ``progress_url_template =
    http://127.0.0.1:<port>/{pod_ip}/progress``: it must pick the right pod (rank 0 of the
    current attempt) and fetch over HTTP, while KWOK's pod IPs are not routable.
    """

    def __init__(self) -> None:
        self.documents: dict[str, dict[str, Any]] = {}
        self.hits: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ip = self.path.strip("/").split("/")[0]
                outer.hits[ip] = outer.hits.get(ip, 0) + 1
                doc = outer.documents.get(ip)
                if doc is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def template(self) -> str:
        return f"http://127.0.0.1:{self.port}/{{pod_ip}}/progress"

    def __enter__(self) -> ProgressServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def serve(self, pod: dict[str, Any], **document: Any) -> None:
        ip = pod["status"]["podIP"]
        self.documents[ip] = {
            "state": "training",
            "updatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **document,
        }


class Operators:
    """The operator replicas of the test session (normally exactly one, the leader)."""

    def __init__(self, cluster: Cluster, kubeconfig: Path, log_dir: Path, progress: ProgressServer):
        self.cluster = cluster
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.progress = progress
        self.replicas: list[OperatorProcess] = []
        self._count = 0

    def spawn(self) -> OperatorProcess:
        self._count += 1
        replica = OperatorProcess(
            self.kubeconfig,
            self.log_dir,
            f"replica-{self._count}",
            env={"KUBETUNE_OPERATOR_PROGRESS_URL_TEMPLATE": self.progress.template},
        ).start()
        self.replicas.append(replica)
        return replica

    @property
    def leader(self) -> OperatorProcess:
        live = [r for r in self.replicas if r.alive and r.is_leader()]
        assert len(live) == 1, f"expected one leader, got {[r.name for r in live]}"
        return live[0]

    def ensure_one(self) -> OperatorProcess:
        """Exactly one live replica, leading (after tests that kill or add replicas)."""
        live = [r for r in self.replicas if r.alive]
        for extra in live[1:]:
            extra.stop()
        if not live:
            live = [self.spawn()]
        live[0].wait_ready()
        self.replicas = [live[0]]
        return live[0]

    def logs(self) -> str:
        return "\n".join(f"--- {r.name}\n{r.log_tail()}" for r in self.replicas)

    def stop_all(self) -> None:
        for replica in self.replicas:
            replica.stop()


def decode_secret(value: str) -> str:
    return base64.b64decode(value).decode()


def iter_owned(cluster: Cluster, namespace: str, job_name: str) -> Iterator[str]:
    for kind in ("pods", "configmaps", "services"):
        for item in kget(
            cluster, kind, "-l", f"kubetune.io/job-name={job_name}", namespace=namespace
        )["items"]:
            yield f"{kind}/{item['metadata']['name']}"


# -- fixtures (imported by the test modules) -----------------------------------------------------
_SESSION: dict[str, Any] = {}


def stop_shared_operator() -> None:
    """Stop the session's shared cluster-wide operator if another module started it: tests
    that write statuses by hand, or run an operator of their own, must not have it
    reconcile their jobs (the ``operator`` fixture starts it again when needed)."""
    shared = _SESSION.get("operators")
    if shared is not None:
        shared.stop_all()


@pytest.fixture(scope="session", name="operators")
def operators_fixture(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operators]:
    """The operator, running with its least-privilege ServiceAccount, shared by all operator
    e2e modules (a process-wide singleton: each importing module gets the same one)."""
    if "operators" not in _SESSION:
        workdir = tmp_path_factory.mktemp("operator")
        kubeconfig = install(cluster, workdir)
        progress = ProgressServer().__enter__()
        ops = Operators(cluster, kubeconfig, workdir, progress)
        try:
            ops.spawn().wait_ready()
        except BaseException:
            ops.stop_all()  # never leave a replica behind, even when setup fails
            progress.__exit__(None, None, None)
            raise
        _SESSION["operators"] = ops
    ops = _SESSION["operators"]
    yield ops
    if not _SESSION.get("stopped"):
        _SESSION["stopped"] = True
        ops.stop_all()
        ops.progress.__exit__(None, None, None)
        assert not [r.name for r in ops.replicas if r.alive], "operator processes left running"


@pytest.fixture(name="operator")
def operator_fixture(operators: Operators, request: pytest.FixtureRequest) -> Iterator[Operators]:
    """Per test: exactly one leading replica; its log is printed when the test fails."""
    operators.ensure_one()
    failed_before = request.session.testsfailed
    yield operators
    if request.session.testsfailed > failed_before:
        print(operators.logs())


@pytest.fixture(name="ns")
def ns_fixture(cluster: Cluster, namespace: str) -> str:
    """The test namespace, enforcing the restricted Pod Security Standard."""
    restricted_namespace(cluster, namespace)
    return namespace
