"""Kueue on the dev cluster: ``kubetune dev kueue up|down|status`` and :class:`KueueRunner`.

Kueue (quotas, queues, admission and preemption of Workloads) is built from source in the same
``go build`` as the Kubernetes binaries (``data/versions.env``: ``KUEUE_VERSION``) and runs as a
local process, like the other cluster components. It is NOT started with the cluster: tests and
developers that need it start it on a running cluster.

What ``up`` installs, all rendered here from Kueue's own manifests in its Go module (the module
zip carries ``config/components``; the build downloaded it already):

* the CRDs (``config/components/crd/bases``), server-side applied, with the conversion webhooks
  Kueue's kustomization enables (:data:`CONVERSION_WEBHOOK_CRDS`);
* only the admission webhooks for Kueue's own objects (group ``kueue.x-k8s.io``: Workload,
  ClusterQueue, LocalQueue, ResourceFlavor, Cohort). The job-integration webhooks (pods, batch
  Jobs, JobSets, ...) are left out: they would intercept every pod of a cluster other tests share;
  kubetune creates its Workloads itself;
* ``kueue-webhook-service``: a Service WITHOUT selector and an EndpointSlice whose endpoint is a
  non-loopback IPv4 address of this machine (the API server refuses loopback endpoints), where
  Kueue's webhook server listens. The API server runs with ``--enable-aggregator-routing`` so it
  dials that endpoint, not the ClusterIP (there is no kube-proxy).

Kueue's internal cert management generates the serving certificate (for
``kueue-webhook-service.kueue-system.svc``), keeps it in a Secret and injects its CA into the
webhook configurations and the CRDs' conversion webhooks. ``up`` returns once that happened and
the webhooks really answer. Kueue's pod would get its certificate by a Secret volume; ``up``
copies it from the Secret into ``<dir>/certs`` instead. Everything Kueue needs locally lives in
one directory (default: beside the cluster's state directory, never inside it)::

    <dir>/config.yaml   the Configuration (config.kueue.x-k8s.io/v1beta2)
    <dir>/certs/        the serving certificate, copied from Kueue's Secret
    <dir>/state.json    pid, ports, version
    <dir>/kueue.log
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubetune.devcluster.build import go_module_dir
from kubetune.devcluster.cluster import DevCluster
from kubetune.devcluster.procs import ProcInfo, free_port, free_ports, spawn, terminate
from kubetune.devcluster.versions import Binaries, DevClusterError

MODULE = "sigs.k8s.io/kueue"
GROUP = "kueue.x-k8s.io"
#: the version the tooling and tests write Kueue objects in (served and stored by v0.19)
API_VERSION = f"{GROUP}/v1beta2"
CONFIG_API_VERSION = "config.kueue.x-k8s.io/v1beta2"
NAMESPACE = "kueue-system"
WEBHOOK_SERVICE = "kueue-webhook-service"
WEBHOOK_SECRET = "kueue-webhook-server-cert"
#: the names Kueue's cert rotator injects its CA into (``<service base>-<type>-webhook-...``)
VALIDATING_CONFIGURATION = "kueue-validating-webhook-configuration"
MUTATING_CONFIGURATION = "kueue-mutating-webhook-configuration"
WEBHOOK_PORT_NAME = "https"
WEBHOOK_SERVICE_PORT = 443
#: CRDs whose conversion webhook Kueue's kustomization enables (config/components/crd/
#: kustomization.yaml); Kueue's cert rotator injects its CA into exactly these
CONVERSION_WEBHOOK_CRDS = (
    "localqueues",
    "clusterqueues",
    "cohorts",
    "workloads",
    "multikueueclusters",
)
#: job integrations: Kueue refuses an empty list (it defaults to batch/job), and batch/job is the
#: least intrusive one (built-in API; Jobs without a queue-name label are ignored; its webhook is
#: not installed)
FRAMEWORKS = ("batch/job",)
FIELD_MANAGER = "kubetune-dev-kueue"
ENDPOINT_SLICE_MANAGER = "kubetune-dev-kueue"  # a label value: no "/"
DIR_ENV = "KUBETUNE_KUEUE_DIR"
#: override the detected non-loopback host address Kueue's webhook server listens on
HOST_IP_ENV = "KUBETUNE_KUEUE_HOST_IP"


def default_dir(cluster_state_dir: Path | None = None) -> Path:
    """``$KUBETUNE_KUEUE_DIR``, else ``<dev cluster state dir>-kueue``."""
    env = os.environ.get(DIR_ENV)
    if env:
        return Path(env)
    from kubetune.devcluster.cluster import default_state_dir

    state = (cluster_state_dir or default_state_dir()).absolute()
    return state.with_name(state.name + "-kueue")


# -- the host address ----------------------------------------------------------------------------
def _usable_ipv4(address: str) -> bool:
    """Not loopback, link-local or unspecified: what an EndpointSlice endpoint may hold."""
    parts = address.split(".")
    return (
        len(parts) == 4
        and not address.startswith("127.")
        and not address.startswith("169.254.")
        and address != "0.0.0.0"
    )


def host_ipv4() -> str:
    """A non-loopback IPv4 address of this machine that the API server can dial.

    ``$KUBETUNE_KUEUE_HOST_IP``, else the source address of the default route (a UDP socket's
    ``connect`` sends nothing), else the first usable address of any interface.
    """
    env = os.environ.get(HOST_IP_ENV)
    if env:
        if not _usable_ipv4(env):
            raise DevClusterError(f"{HOST_IP_ENV}={env} is not a non-loopback IPv4 address")
        return env
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))
        address = str(s.getsockname()[0])
        if _usable_ipv4(address):
            return address
    for address in _interface_ipv4s():
        if _usable_ipv4(address):
            return address
    raise DevClusterError(
        "no non-loopback IPv4 address found for Kueue's webhook server (the API server refuses "
        f"loopback webhook endpoints); set {HOST_IP_ENV} to an address of this machine"
    )


def _interface_ipv4s() -> list[str]:
    """IPv4 addresses of the network interfaces (Linux SIOCGIFADDR)."""
    import fcntl
    import struct

    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            with contextlib.suppress(OSError):
                req = struct.pack("256s", name.encode()[:15])
                out.append(socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, req)[20:24]))
    return out


# -- Kueue's manifests (from its Go module) ------------------------------------------------------
def module_dir(version: str, go: Path | None = None) -> Path:
    """Kueue's module directory in the Go module cache (downloaded through the module proxy if
    it is not there: the build downloads it anyway)."""
    return go_module_dir(MODULE, version, go)


@dataclass(frozen=True)
class UpstreamManifests:
    """The parts of Kueue's ``config/components`` that ``up`` installs (unmodified)."""

    crds: list[dict[str, Any]]
    #: the MutatingWebhookConfiguration and ValidatingWebhookConfiguration of ``webhook/``
    webhook_configurations: list[dict[str, Any]]

    @classmethod
    def load(cls, module: Path) -> UpstreamManifests:
        components = module / "config" / "components"
        crd_files = sorted((components / "crd" / "bases").glob("*.yaml"))
        webhooks = components / "webhook" / "manifests.yaml"
        if not crd_files or not webhooks.is_file():
            raise DevClusterError(f"{components} lacks crd/bases/*.yaml or webhook/manifests.yaml")
        crds = [d for f in crd_files for d in yaml.safe_load_all(f.read_text()) if d]
        configs = [d for d in yaml.safe_load_all(webhooks.read_text()) if d]
        return cls(crds, configs)


def service_ref(path: str) -> dict[str, Any]:
    """A webhook clientConfig pointing at :data:`WEBHOOK_SERVICE`."""
    return {
        "namespace": NAMESPACE,
        "name": WEBHOOK_SERVICE,
        "path": path,
        "port": WEBHOOK_SERVICE_PORT,
    }


def render_crds(crds: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kueue's CRDs, those of :data:`CONVERSION_WEBHOOK_CRDS` with their conversion webhook (as
    ``config/components/crd/patches/webhook_in_*.yaml`` adds it). Kueue injects the CA later;
    a caBundle already injected is kept (server-side apply leaves fields we do not set alone)."""
    out = []
    for crd in crds:
        crd = copy.deepcopy(crd)
        crd["metadata"].pop("creationTimestamp", None)
        if crd["spec"]["names"]["plural"] in CONVERSION_WEBHOOK_CRDS:
            crd["spec"]["conversion"] = {
                "strategy": "Webhook",
                "webhook": {
                    "clientConfig": {"service": service_ref("/convert")},
                    "conversionReviewVersions": ["v1"],
                },
            }
        out.append(crd)
    return out


def _only_kueue_group(webhook: dict[str, Any]) -> bool:
    rules = webhook.get("rules") or []
    return bool(rules) and all(r.get("apiGroups") == [GROUP] for r in rules)


def render_webhook_configurations(docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kueue's webhook configurations reduced to the webhooks for ``kueue.x-k8s.io`` objects,
    named as Kueue's cert rotator expects and pointed at :data:`WEBHOOK_SERVICE`."""
    names = {
        "MutatingWebhookConfiguration": MUTATING_CONFIGURATION,
        "ValidatingWebhookConfiguration": VALIDATING_CONFIGURATION,
    }
    out = []
    for doc in docs:
        kind = doc.get("kind")
        if kind not in names:
            continue
        webhooks = []
        for hook in doc.get("webhooks") or []:
            if not _only_kueue_group(hook):
                continue
            hook = copy.deepcopy(hook)
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"service": service_ref(path)}
            webhooks.append(hook)
        out.append(
            {
                "apiVersion": doc["apiVersion"],
                "kind": kind,
                "metadata": {"name": names[str(kind)]},
                "webhooks": webhooks,
            }
        )
    if len(out) != 2 or not all(c["webhooks"] for c in out):
        raise DevClusterError("Kueue's webhook manifests lack the kueue.x-k8s.io webhooks")
    return out


def render_service(host: str, port: int) -> list[dict[str, Any]]:
    """The namespace, the (empty) Secret Kueue's cert rotator fills, the selector-less webhook
    Service and its EndpointSlice (``host:port``)."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        # the rotator only fills an existing Secret (config/components/internalcert/secret.yaml)
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": WEBHOOK_SECRET, "namespace": NAMESPACE},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": WEBHOOK_SERVICE, "namespace": NAMESPACE},
            "spec": {
                "type": "ClusterIP",
                "ports": [
                    {
                        "name": WEBHOOK_PORT_NAME,
                        "port": WEBHOOK_SERVICE_PORT,
                        "protocol": "TCP",
                        "targetPort": port,
                    }
                ],
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": WEBHOOK_SERVICE,
                "namespace": NAMESPACE,
                "labels": {
                    "kubernetes.io/service-name": WEBHOOK_SERVICE,
                    # keeps the EndpointSlice controller's hands off it
                    "endpointslice.kubernetes.io/managed-by": ENDPOINT_SLICE_MANAGER,
                },
            },
            "addressType": "IPv4",
            # the API server matches the slice's port to the Service's by NAME
            "ports": [{"name": WEBHOOK_PORT_NAME, "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [host], "conditions": {"ready": True}}],
        },
    ]


@dataclass(frozen=True)
class KueueSettings:
    """Where Kueue listens; rendered into its Configuration by :func:`render_config`."""

    #: the non-loopback host address its webhook server binds (the EndpointSlice's endpoint)
    webhook_host: str
    webhook_port: int
    metrics_port: int
    health_port: int
    cert_dir: Path
    frameworks: Sequence[str] = FRAMEWORKS


def render_config(settings: KueueSettings) -> dict[str, Any]:
    """Kueue's Configuration: internal cert management, one replica (no leader election),
    minimal job integrations, no visibility API server (an aggregated API on all interfaces that
    nothing here uses). No ``waitForPodsReady`` block: in v1beta2 its absence turns it off."""
    return {
        "apiVersion": CONFIG_API_VERSION,
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{settings.health_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{settings.metrics_port}"},
        "webhook": {
            "host": settings.webhook_host,
            "port": settings.webhook_port,
            "certDir": str(settings.cert_dir),
        },
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {
            "enable": True,
            "webhookServiceName": WEBHOOK_SERVICE,
            "webhookSecretName": WEBHOOK_SECRET,
        },
        "integrations": {"frameworks": list(settings.frameworks)},
        "featureGates": {"VisibilityOnDemand": False},
    }


def write_secret_files(directory: Path, data: dict[str, str], keys: Sequence[str]) -> None:
    """Write a Secret's base64 ``data`` entries ``keys`` (those present) as files, each atomically
    (owner-only), as a Secret volume would show them."""
    directory.mkdir(parents=True, exist_ok=True)
    for key in keys:
        if key not in data:
            continue
        tmp = directory / f".{key}.tmp"
        tmp.write_bytes(base64.b64decode(data[key]))
        tmp.chmod(0o600)
        tmp.replace(directory / key)


def dump_all(docs: Iterable[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(list(docs), sort_keys=False)


# -- the process ---------------------------------------------------------------------------------
@dataclass
class KueueState:
    """What ``state.json`` records about a running Kueue."""

    process: ProcInfo
    version: str
    webhook: str
    health_port: int
    metrics_port: int
    cluster_state_dir: str
    started_at: float = field(default_factory=time.time)
    up_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "process": self.process.to_json(),
            "version": self.version,
            "webhook": self.webhook,
            "health_port": self.health_port,
            "metrics_port": self.metrics_port,
            "cluster_state_dir": self.cluster_state_dir,
            "started_at": self.started_at,
            "up_seconds": self.up_seconds,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KueueState:
        return cls(
            process=ProcInfo.from_json(data["process"]),
            version=str(data["version"]),
            webhook=str(data["webhook"]),
            health_port=int(data["health_port"]),
            metrics_port=int(data["metrics_port"]),
            cluster_state_dir=str(data["cluster_state_dir"]),
            started_at=float(data["started_at"]),
            up_seconds=float(data.get("up_seconds", 0.0)),
        )


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status) == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


#: server-side dry runs that pass through every kind of Kueue webhook: the ResourceFlavor
#: webhooks (mutating + validating) and, written at v1beta1, a Cohort (conversion to the stored
#: v1beta2, then its validating webhook). Dry runs leave nothing behind.
_PROBES = [
    {"apiVersion": API_VERSION, "kind": "ResourceFlavor", "metadata": {"name": "kubetune-probe"}},
    {"apiVersion": f"{GROUP}/v1beta1", "kind": "Cohort", "metadata": {"name": "kubetune-probe"}},
]


class KueueRunner:
    """Kueue for one dev cluster (a :class:`DevCluster`, running): ``up`` / ``down`` /
    ``status``. See the module docstring for what it installs."""

    def __init__(
        self,
        cluster: DevCluster,
        directory: Path | None = None,
        binaries: Binaries | None = None,
    ) -> None:
        self.cluster = cluster
        self.dir = (directory or default_dir(cluster.state_dir)).absolute()
        self.binaries = binaries or cluster.binaries
        self._popens: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def config_file(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def log_file(self) -> Path:
        return self.dir / "kueue.log"

    @property
    def cert_dir(self) -> Path:
        return self.dir / "certs"

    @property
    def version(self) -> str:
        return self.binaries.versions.kueue

    def load_state(self) -> KueueState | None:
        try:
            return KueueState.from_json(json.loads(self.state_file.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def running(self) -> KueueState | None:
        state = self.load_state()
        return state if state is not None and state.process.alive() else None

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, input=input, check=check, timeout=timeout)

    def apply(self, docs: Iterable[dict[str, Any]]) -> None:
        """Server-side apply ``docs`` as :data:`FIELD_MANAGER`."""
        self.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            f"--field-manager={FIELD_MANAGER}",
            "-f",
            "-",
            input=dump_all(docs),
            timeout=120,
        )

    # -- up --------------------------------------------------------------------------------
    def up(
        self,
        *,
        timeout: float = 120.0,
        die_with_parent: bool = False,
        module: Path | None = None,
    ) -> KueueState:
        """Install Kueue's CRDs, webhooks and webhook Service, start Kueue and wait until it is
        ready: CA injected everywhere and every kind of webhook answering. A Kueue already
        running for this directory is returned as is."""
        t0 = time.monotonic()
        binary = self.binaries.path("kueue")
        if not os.access(binary, os.X_OK):
            raise DevClusterError(
                f"{binary} is not built: run `kubetune dev cluster build kubernetes`"
            )
        if not self.cluster.is_running():
            raise DevClusterError(f"no dev cluster is running in {self.cluster.state_dir}")
        state = self.running()
        if state is not None:
            return state
        upstream = UpstreamManifests.load(module or module_dir(self.version))
        host = host_ipv4()
        webhook_port = free_port(host)
        health_port, metrics_port = free_ports(2)
        settings = KueueSettings(host, webhook_port, metrics_port, health_port, self.cert_dir)

        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert_dir.mkdir(exist_ok=True)
        self.config_file.write_text(yaml.safe_dump(render_config(settings), sort_keys=False))
        crds = render_crds(upstream.crds)
        self.apply(render_service(host, webhook_port))
        self.apply(crds)
        self.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            *(f"crd/{c['metadata']['name']}" for c in crds),
            timeout=90,
        )
        self.apply(render_webhook_configurations(upstream.webhook_configurations))

        argv = [str(binary), f"--config={self.config_file}", "--zap-log-level=info"]
        env = dict(os.environ, KUBECONFIG=str(self.cluster.kubeconfig))
        proc, info = spawn(
            "kueue", argv, self.log_file, env=env, cwd=self.dir, die_with_parent=die_with_parent
        )
        self._popens[proc.pid] = proc
        state = KueueState(
            process=info,
            version=self.version,
            webhook=f"https://{host}:{webhook_port}",
            health_port=health_port,
            metrics_port=metrics_port,
            cluster_state_dir=str(self.cluster.state_dir),
        )
        try:
            self._wait_ready(proc, state, time.monotonic() + timeout)
        except BaseException:
            terminate([info], self._popens)
            raise
        state.up_seconds = round(time.monotonic() - t0, 2)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state.to_json(), indent=2))
        tmp.replace(self.state_file)
        return state

    def _wait_ready(
        self, proc: subprocess.Popen[bytes], state: KueueState, deadline: float
    ) -> None:
        checks = [
            ("its serving certificate (Secret " + WEBHOOK_SECRET + ")", self._mount_certs),
            ("/readyz", lambda: _http_ok(f"http://127.0.0.1:{state.health_port}/readyz")),
            ("the CA injected into webhooks and CRDs", lambda: not self.ca_missing()),
            ("the webhooks answering", self._webhooks_answer),
        ]
        for what, check in checks:
            while not check():
                if proc.poll() is not None:
                    raise DevClusterError(
                        f"kueue exited with code {proc.returncode}; its log:\n{self.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise DevClusterError(
                        f"kueue did not become ready (waiting for {what}); its log:\n"
                        f"{self.log_tail()}"
                    )
                time.sleep(0.25)

    def _mount_certs(self) -> bool:
        """Copy the serving certificate from Kueue's Secret into its cert directory, as the
        kubelet mounts it for Kueue's pod: Kueue's cert rotator fills the Secret, then waits
        for the files to appear. True once they are there."""
        proc = self.kubectl(
            "get", "secret", WEBHOOK_SECRET, "-n", NAMESPACE, "-o", "json", check=False
        )
        if proc.returncode != 0:
            return False
        data = json.loads(proc.stdout).get("data") or {}
        if not data.get("tls.crt") or not data.get("tls.key"):
            return False
        write_secret_files(self.cert_dir, data, ("tls.crt", "tls.key", "ca.crt"))
        return True

    def ca_missing(self) -> list[str]:
        """The webhook configurations and conversion CRDs that have no caBundle yet."""
        names = [f"{plural}.{GROUP}" for plural in CONVERSION_WEBHOOK_CRDS]
        missing = []
        proc = self.kubectl(
            "get",
            *(f"crd/{n}" for n in names),
            f"mutatingwebhookconfiguration/{MUTATING_CONFIGURATION}",
            f"validatingwebhookconfiguration/{VALIDATING_CONFIGURATION}",
            "-o",
            "json",
            check=False,
        )
        if proc.returncode != 0:
            return ["(not readable)"]
        for item in json.loads(proc.stdout).get("items", []):
            name = item["metadata"]["name"]
            if item["kind"] == "CustomResourceDefinition":
                conv = item["spec"].get("conversion", {}).get("webhook", {})
                bundles = [conv.get("clientConfig", {}).get("caBundle")]
            else:
                bundles = [w["clientConfig"].get("caBundle") for w in item.get("webhooks", [])]
            if not all(bundles):
                missing.append(name)
        return missing

    def _webhooks_answer(self) -> bool:
        proc = self.kubectl(
            "create",
            "--dry-run=server",
            "-o",
            "name",
            "-f",
            "-",
            input=dump_all(_PROBES),
            check=False,
        )
        return proc.returncode == 0

    # -- down / status ---------------------------------------------------------------------
    def down(self, *, purge: bool = False) -> bool:
        """Stop Kueue and remove its webhook configurations (they fail closed: without a server
        every write of a Kueue object would be refused). ``purge`` also deletes the CRDs (and
        with them every Kueue object), the namespace and the directory, leaving the cluster as
        before ``up``. Returns False when the process could not be stopped."""
        state = self.load_state()
        stuck = terminate([state.process], self._popens, timeout=15) if state else []
        if stuck:
            return False
        self.state_file.unlink(missing_ok=True)
        if self.cluster.is_running():
            self.kubectl(
                "delete",
                "--ignore-not-found",
                f"mutatingwebhookconfiguration/{MUTATING_CONFIGURATION}",
                f"validatingwebhookconfiguration/{VALIDATING_CONFIGURATION}",
                check=False,
            )
            if purge:
                self._purge_cluster_objects()
        if purge:
            shutil.rmtree(self.dir, ignore_errors=True)
        return True

    def _purge_cluster_objects(self) -> None:
        """Delete Kueue's CRDs (and so its objects) and namespace. Kueue is stopped already, so
        nobody would remove its finalizers (``kueue.x-k8s.io/resource-in-use``): strip them
        first, or the CRDs would hang in Terminating."""
        crds = self.kubectl("get", "crd", "-o", "name", check=False).stdout.split()
        ours = [c.removeprefix("customresourcedefinition.apiextensions.k8s.io/") for c in crds]
        ours = [c for c in ours if c.endswith(f".{GROUP}")]
        if not ours:
            return
        listed = self.kubectl("get", ",".join(ours), "-A", "-o", "json", check=False)
        items = json.loads(listed.stdout).get("items", []) if listed.returncode == 0 else []
        for item in items:
            meta = item["metadata"]
            if not meta.get("finalizers"):
                continue
            # kubectl resolves a CRD's singular name (its lowercased kind)
            resource = f"{str(item['kind']).lower()}.{GROUP}"
            ns_args = ["-n", meta["namespace"]] if meta.get("namespace") else []
            self.kubectl(
                "patch",
                resource,
                meta["name"],
                *ns_args,
                "--type=merge",
                "-p",
                '{"metadata":{"finalizers":null}}',
                check=False,
            )
        self.kubectl(
            "delete",
            "--ignore-not-found",
            "--wait=true",
            *(f"crd/{c}" for c in ours),
            check=False,
            timeout=120,
        )
        self.kubectl(
            "delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false", check=False
        )

    def status(self) -> dict[str, Any]:
        """Running or not, the version, the webhook address and readiness."""
        state = self.running()
        out: dict[str, Any] = {"running": state is not None, "dir": str(self.dir)}
        if state is None:
            return out
        out.update(
            pid=state.process.pid,
            version=state.version,
            webhook=state.webhook,
            ready=_http_ok(f"http://127.0.0.1:{state.health_port}/readyz"),
            log=str(self.log_file),
        )
        return out

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
