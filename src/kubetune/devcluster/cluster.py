"""Run a real local control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler) with KWOK fake nodes, from the binaries built by ``data/build.sh``.

Everything listens on 127.0.0.1 on ports chosen at start (the API server port can be fixed), so
several clusters (CI and a developer's) can run side by side with different state directories.
The state directory holds the PKI, kubeconfigs, etcd data, logs and ``state.json`` (process ids,
ports); ``down`` stops the processes and removes it.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubetune.devcluster import certs, manifests
from kubetune.devcluster.nodeagent import cleanup as nodeagent_cleanup
from kubetune.devcluster.nodeagent import launcher as nodeagent
from kubetune.devcluster.procs import (
    ProcInfo,
    free_ports,
    port_in_use,
    rss_kib,
    spawn,
    terminate,
)
from kubetune.devcluster.versions import (
    CLUSTER_COMPONENTS,
    COMPONENT_BINARIES,
    Binaries,
    DevClusterError,
)

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
#: fake pod IPs on loopback (127.244/16): the operator really dials pod IPs (rank 0's
#: /progress), and on a dev machine that must never leave the host
POD_CIDR = "127.244.0.1/16"
#: fake node InternalIP: loopback, so nothing ever dials a real address for a fake kubelet
NODE_IP = "127.0.0.1"
CLUSTER_NAME = "kubetune-dev"
STATE_VERSION = 1
#: components needed to run the cluster (helm is built and cached too, for chart work)
RUNTIME_COMPONENTS = ("etcd", "kubernetes")
#: what a state directory may hold (anything else means it is not ours)
STATE_ENTRIES = frozenset(
    {
        "state.json",
        "state.tmp",
        "kubeconfig",
        "kubeconfigs",
        "pki",
        "etcd",
        "kwok",
        "logs",
        nodeagent.STATE_SUBDIR,
    }
)
#: every listener, all on 127.0.0.1, picked free at each start
PORT_NAMES = ("etcd", "etcd_peer", "kube_controller_manager", "kube_scheduler", "kwok", "apiserver")
STARTUP_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
#: what :meth:`DevCluster.restart` can restart (chaos tests)
RESTARTABLE = ("etcd", "kube-apiserver")

Progress = Callable[[str], None]


def default_state_dir() -> Path:
    env = os.environ.get("KUBETUNE_STATE_DIR")
    if env:
        return Path(env)
    return Path.home() / ".local" / "state" / "kubetune" / "cluster"


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(
    path: Path, server: str, ca: Path, cert: Path, key: Path, user: str = "admin"
) -> Path:
    """Write a self-contained kubeconfig (credentials embedded)."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {"server": server, "certificate-authority-data": _b64(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(cert),
                    "client-key-data": _b64(key),
                },
            }
        ],
        "contexts": [{"name": CLUSTER_NAME, "context": {"cluster": CLUSTER_NAME, "user": user}}],
        "current-context": CLUSTER_NAME,
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
    return path


@dataclass
class ClusterState:
    """What ``state.json`` records about a running cluster."""

    state_dir: str
    kubeconfig: str
    server: str
    ports: dict[str, int]
    processes: list[ProcInfo]
    versions: dict[str, str]
    binaries: dict[str, str]
    started_at: float
    up_seconds: float = 0.0
    nodes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "state_version": STATE_VERSION,
            "state_dir": self.state_dir,
            "kubeconfig": self.kubeconfig,
            "server": self.server,
            "ports": self.ports,
            "processes": [p.to_json() for p in self.processes],
            "versions": self.versions,
            "binaries": self.binaries,
            "started_at": self.started_at,
            "up_seconds": self.up_seconds,
            "nodes": self.nodes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterState:
        return cls(
            state_dir=data["state_dir"],
            kubeconfig=data["kubeconfig"],
            server=data["server"],
            ports={k: int(v) for k, v in data["ports"].items()},
            processes=[ProcInfo.from_json(p) for p in data["processes"]],
            versions=dict(data["versions"]),
            binaries=dict(data["binaries"]),
            started_at=float(data["started_at"]),
            up_seconds=float(data.get("up_seconds", 0.0)),
            nodes=list(data.get("nodes", [])),
        )


class _Api:
    """A tiny client for the API server (stdlib only), authenticated as the admin."""

    def __init__(self, server: str, pki: certs.Pki) -> None:
        self.server = server
        self.ctx = ssl.create_default_context(cafile=str(pki.ca_crt))
        self.ctx.load_cert_chain(str(pki.client_crt("admin")), str(pki.client_key("admin")))

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(
                self.server + path, context=self.ctx, timeout=timeout
            ) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()
        except (urllib.error.URLError, OSError):
            return 0, b""

    def get_json(self, path: str) -> Any:
        code, body = self.get(path)
        if code != 200:
            return None
        return json.loads(body)


def _healthz_insecure(url: str, timeout: float = 2.0) -> bool:
    """GET a component's /healthz over TLS on loopback (components self-sign their cert)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _log_tail(path: str | Path, lines: int = 25) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def _node_ready(node: dict[str, Any]) -> bool:
    for cond in node.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def _startup_tainted(node: dict[str, Any]) -> bool:
    """True while the node still has the taints a new node gets until the node lifecycle
    controller has seen it Ready (pods would wait for it to go)."""
    taints = node.get("spec", {}).get("taints") or []
    return any(t.get("key") in STARTUP_TAINTS for t in taints)


class DevCluster:
    """A local control plane rooted at ``state_dir``.

    ``DevCluster().up()`` starts it (building missing binaries first when ``build=True``),
    ``down()`` stops every process and removes the state directory.
    """

    def __init__(self, state_dir: Path | None = None, binaries: Binaries | None = None) -> None:
        self.state_dir = (state_dir or default_state_dir()).absolute()
        self._binaries = binaries
        self._popens: dict[int, subprocess.Popen[bytes]] = {}

    # -- paths ---------------------------------------------------------------------------------
    @property
    def binaries(self) -> Binaries:
        if self._binaries is None:
            self._binaries = Binaries.default()
        return self._binaries

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pki(self) -> certs.Pki:
        return certs.Pki(self.state_dir / "pki")

    @property
    def kubectl_path(self) -> Path:
        return self.binaries.path("kubectl")

    @property
    def helm_path(self) -> Path:
        return self.binaries.path("helm")

    # -- state ---------------------------------------------------------------------------------
    def load_state(self) -> ClusterState | None:
        try:
            return ClusterState.from_json(json.loads(self.state_file.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _save_state(self, state: ClusterState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state.to_json(), indent=2))
        tmp.replace(self.state_file)

    def is_running(self) -> bool:
        state = self.load_state()
        return bool(state and state.processes and all(p.alive() for p in state.processes))

    def api(self) -> _Api:
        state = self.load_state()
        if state is None:
            raise DevClusterError(f"no cluster state in {self.state_dir}")
        return _Api(state.server, self.pki)

    # -- kubectl -------------------------------------------------------------------------------
    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster."""
        cmd = [str(self.kubectl_path), "--kubeconfig", str(self.kubeconfig), *args]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise DevClusterError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    def env_lines(self) -> list[str]:
        """Shell lines that point kubectl, helm and clients at this cluster."""
        b = self.binaries
        return [
            f"export KUBECONFIG={shlex.quote(str(self.kubeconfig))}",
            f"export KUBETUNE_KUBECTL={shlex.quote(str(self.kubectl_path))}",
            f"export KUBETUNE_HELM={shlex.quote(str(self.helm_path))}",
            f'export PATH="{b.component_dir("kubernetes")}:{b.component_dir("helm")}:$PATH"',
        ]

    # -- up ------------------------------------------------------------------------------------
    def up(
        self,
        *,
        apiserver_port: int = 0,
        gpu_nodes: int = 4,
        cpu_nodes: int = 2,
        gpus_per_node: int = 8,
        real_nodes: int = 0,
        real_gpus_per_node: int = 2,
        build: bool = True,
        die_with_parent: bool = False,
        timeout: float = 120.0,
        progress: Progress | None = None,
        build_output: Callable[[str], None] | None = None,
    ) -> ClusterState:
        """Start the cluster and wait until it is ready; returns its state.

        If a healthy cluster already runs in ``state_dir`` it is reused. A stale state directory
        (processes gone) is cleaned up first. On failure everything started is stopped again.
        ``real_nodes``: that many nodes whose pods really run (:meth:`start_node_agent`).
        """
        say = progress or (lambda _msg: None)
        existing = self.load_state()
        if existing is not None:
            if self.is_running() and self._apiserver_ready(existing):
                say("cluster already running")
                return existing
            say("cleaning up a stale cluster state")
            self.down()
        elif self.state_dir.exists():
            self._remove_state_dir()

        missing = self.binaries.missing(CLUSTER_COMPONENTS)
        if not build:
            # helm is cached alongside but not needed to run the cluster
            missing = [c for c in missing if c in RUNTIME_COMPONENTS]
        if missing:
            if not build:
                raise DevClusterError(
                    f"binaries missing for {missing}: run `kubetune dev cluster build` first"
                )
            from kubetune.devcluster.build import build as build_binaries

            say(f"building {', '.join(missing)} from source (cold builds take many minutes)")
            self.state_dir.mkdir(parents=True, exist_ok=True)
            build_binaries(missing, on_line=build_output)

        t0 = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        infos: list[ProcInfo] = []
        try:
            state = self._start(
                infos,
                apiserver_port=apiserver_port,
                nodes=manifests.default_nodes(gpu_nodes, cpu_nodes, gpus_per_node),
                die_with_parent=die_with_parent,
                deadline=time.monotonic() + timeout,
                say=say,
            )
            if real_nodes:
                say(f"starting the node agent ({real_nodes} real-pod nodes)")
                self._spawn_node_agent(state, real_nodes, real_gpus_per_node, die_with_parent)
                self._wait_real_nodes(state, real_nodes, time.monotonic() + timeout)
        except BaseException:
            terminate(infos, self._popens)
            nodeagent_cleanup.cleanup(self.state_dir / nodeagent.STATE_SUBDIR)
            raise
        state.up_seconds = round(time.monotonic() - t0, 2)
        self._save_state(state)
        say(f"cluster ready in {state.up_seconds:.1f}s")
        return state

    def _start(
        self,
        infos: list[ProcInfo],
        *,
        apiserver_port: int,
        nodes: list[manifests.NodeSpec],
        die_with_parent: bool,
        deadline: float,
        say: Progress,
    ) -> ClusterState:
        """Bring the control plane up in dependency order; every process started is appended
        to ``infos`` (and state.json) at once, so a failed start can be stopped."""
        say("generating certificates")
        pki = certs.generate(self.state_dir / "pki")
        state = self._new_state(_pick_ports(apiserver_port), infos, nodes)
        boot = _Boot(self, state, pki, deadline=deadline, die_with_parent=die_with_parent)
        say("starting etcd")
        boot.etcd()
        say("starting kube-apiserver")
        boot.apiserver()
        say("starting kube-controller-manager, kube-scheduler and kwok")
        boot.controller_manager()
        boot.scheduler()
        boot.kwok()
        say(f"creating {len(nodes)} fake nodes")
        self.kubectl("apply", "-f", "-", input=manifests.nodes_yaml(nodes))
        boot.wait_components_healthy()
        say("waiting for the nodes to become Ready and schedulable")
        boot.wait_nodes_ready({n.name for n in nodes})
        say("waiting for the default ServiceAccount")
        boot.wait_default_service_account()
        return state

    # -- the node agent (pods that really run) -----------------------------------------------
    def start_node_agent(
        self,
        nodes: int = 2,
        gpus_per_node: int = 2,
        *,
        die_with_parent: bool = False,
        timeout: float = 60.0,
    ) -> list[str]:
        """Add real-pod nodes to the running cluster (``kubetune.devcluster.nodeagent``);
        returns their names once they are Ready and schedulable."""
        state = self.load_state()
        if state is None:
            raise DevClusterError(f"no cluster state in {self.state_dir}")
        if any(p.name == nodeagent.PROCESS_NAME and p.alive() for p in state.processes):
            raise DevClusterError("a node agent already runs for this cluster")
        self._spawn_node_agent(state, nodes, gpus_per_node, die_with_parent)
        return self._wait_real_nodes(state, nodes, time.monotonic() + timeout)

    def stop_node_agent(self) -> list[str]:
        """Stop the node agent (it kills its pods and removes its nodes and network);
        returns names of processes that would not stop."""
        state = self.load_state()
        if state is None:
            return []
        agents = [p for p in state.processes if p.name == nodeagent.PROCESS_NAME]
        stuck = terminate(agents, self._popens, timeout=30.0)
        nodeagent_cleanup.cleanup(self.state_dir / nodeagent.STATE_SUBDIR)
        if not stuck:
            state.processes = [p for p in state.processes if p not in agents]
            state.nodes = [n for n in state.nodes if not nodeagent.is_real_node(n)]
            self._save_state(state)
        return stuck

    @property
    def node_agent_dir(self) -> Path:
        """The agent's state: ``pvc/<claim>`` host directories, ``logs/``, ``pods/``."""
        return self.state_dir / nodeagent.STATE_SUBDIR

    def _spawn_node_agent(
        self, state: ClusterState, nodes: int, gpus: int, die_with_parent: bool
    ) -> None:
        argv = nodeagent.agent_argv(self.kubeconfig, self.node_agent_dir, nodes, gpus)
        proc, info = spawn(
            nodeagent.PROCESS_NAME,
            argv,
            self.logs_dir / f"{nodeagent.PROCESS_NAME}.log",
            cwd=self.state_dir,
            die_with_parent=die_with_parent,
        )
        self._popens[proc.pid] = proc
        state.processes.append(info)
        state.nodes = [*state.nodes, *nodeagent.node_names(nodes)]
        self._save_state(state)

    def _wait_real_nodes(self, state: ClusterState, nodes: int, deadline: float) -> list[str]:
        names = nodeagent.node_names(nodes)
        api = _Api(state.server, self.pki)
        agent = next(p for p in reversed(state.processes) if p.name == nodeagent.PROCESS_NAME)
        while True:
            data = api.get_json("/api/v1/nodes") or {}
            ready = {
                i["metadata"]["name"]
                for i in data.get("items", [])
                if _node_ready(i) and not _startup_tainted(i)
            }
            if set(names) <= ready:
                return names
            if not agent.alive() or time.monotonic() > deadline:
                raise DevClusterError(
                    "the node agent's nodes did not become Ready; its log:\n" + _log_tail(agent.log)
                )
            time.sleep(0.2)

    def _new_state(
        self, ports: dict[str, int], infos: list[ProcInfo], nodes: list[manifests.NodeSpec]
    ) -> ClusterState:
        """The state of a cluster about to start: where it listens, what runs it."""
        b = self.binaries
        return ClusterState(
            state_dir=str(self.state_dir),
            kubeconfig=str(self.kubeconfig),
            server=f"https://127.0.0.1:{ports['apiserver']}",
            ports=ports,
            processes=infos,
            versions={c: b.versions.of(c) for c in COMPONENT_BINARIES},
            binaries={n: str(b.path(n)) for names in COMPONENT_BINARIES.values() for n in names},
            started_at=time.time(),
            nodes=[n.name for n in nodes],
        )

    def _apiserver_ready(self, state: ClusterState) -> bool:
        try:
            return _Api(state.server, self.pki).get("/readyz", timeout=2)[0] == 200
        except (OSError, ssl.SSLError):
            return False

    # -- down ----------------------------------------------------------------------------------
    def down(self, *, keep_state: bool = False) -> list[str]:
        """Stop every process of the cluster and remove the state directory.

        Returns the names of processes that could not be stopped (normally empty).
        """
        state = self.load_state()
        stuck: list[str] = []
        if state is not None:
            # the clients first, then the API server, then etcd
            servers = ("kube-apiserver", "etcd")
            groups = [[p for p in state.processes if p.name not in servers]]
            groups += [[p for p in state.processes if p.name == s] for s in servers]
            for group in groups:
                stuck += terminate(group, self._popens)
        # what a node agent that was killed left on the host (its network)
        nodeagent_cleanup.cleanup(self.node_agent_dir)
        self._popens.clear()
        if not keep_state and self.state_dir.exists() and not stuck:
            self._remove_state_dir()
        return stuck

    def _remove_state_dir(self) -> None:
        """Remove the state directory, refusing one that holds anything the cluster did not
        write (a mistyped --state-dir must not wipe a user's directory)."""
        foreign = [e.name for e in self.state_dir.iterdir() if e.name not in STATE_ENTRIES]
        if foreign:
            raise DevClusterError(
                f"{self.state_dir} holds files the dev cluster did not create "
                f"({', '.join(sorted(foreign)[:5])}); refusing to remove it"
            )
        shutil.rmtree(self.state_dir, ignore_errors=True)

    # -- status --------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Processes (alive, pid, RSS), ports and nodes of the cluster."""
        state = self.load_state()
        if state is None:
            return {"running": False, "state_dir": str(self.state_dir)}
        procs = [
            {
                "name": p.name,
                "pid": p.pid,
                "alive": p.alive(),
                "rss_mib": round((rss_kib(p.pid) or 0) / 1024, 1) if p.alive() else None,
                "log": p.log,
            }
            for p in state.processes
        ]
        nodes: list[dict[str, Any]] = []
        ready = self._apiserver_ready(state)
        if ready:
            data = _Api(state.server, self.pki).get_json("/api/v1/nodes") or {}
            for item in data.get("items", []):
                alloc = item.get("status", {}).get("allocatable", {})
                nodes.append(
                    {
                        "name": item["metadata"]["name"],
                        "ready": _node_ready(item),
                        "gpus": alloc.get(manifests.GPU_RESOURCE, "0"),
                        "pool": item["metadata"].get("labels", {}).get(manifests.NODE_POOL_LABEL),
                    }
                )
        return {
            "running": all(p["alive"] for p in procs) and ready,
            "state_dir": state.state_dir,
            "kubeconfig": state.kubeconfig,
            "server": state.server,
            "ports": state.ports,
            "versions": state.versions,
            "up_seconds": state.up_seconds,
            "processes": procs,
            "nodes": nodes,
        }

    def restart(
        self,
        component: str,
        *,
        hard: bool = False,
        die_with_parent: bool = False,
        timeout: float = 60.0,
    ) -> ProcInfo:
        """Stop one control-plane process (SIGTERM, or SIGKILL with ``hard``: a crash) and
        start it again with the same command line, log and ports; returns once it is healthy
        again (etcd ``/health``, the API server ``/readyz``). For chaos tests. ``component``:
        one of :data:`RESTARTABLE`."""
        if component not in RESTARTABLE:
            raise DevClusterError(f"cannot restart {component!r}: one of {RESTARTABLE}")
        state = self.load_state()
        old = next((p for p in state.processes if p.name == component), None) if state else None
        if state is None or old is None:
            raise DevClusterError(f"no running {component} in {self.state_dir}")
        if hard and old.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(old.pid, signal.SIGKILL)
        if terminate([old], self._popens):
            raise DevClusterError(f"{component} (pid {old.pid}) did not stop")
        proc, info = spawn(
            component,
            old.argv,
            Path(old.log),
            cwd=self.state_dir,
            die_with_parent=die_with_parent,
        )
        self._popens[proc.pid] = proc
        state.processes = [info if p is old else p for p in state.processes]
        self._save_state(state)
        if component == "etcd":
            healthy = functools.partial(_http_ok, f"http://127.0.0.1:{state.ports['etcd']}/health")
        else:
            healthy = functools.partial(self._apiserver_ready, state)
        deadline = time.monotonic() + timeout
        while not healthy():
            if not info.alive() or time.monotonic() > deadline:
                raise DevClusterError(
                    f"{component} did not come back after a restart; its log:\n"
                    + _log_tail(old.log)
                )
            time.sleep(0.1)
        return info

    def rss_mib(self) -> dict[str, float]:
        state = self.load_state()
        out: dict[str, float] = {}
        for p in state.processes if state else []:
            kib = rss_kib(p.pid) if p.alive() else None
            if kib is not None:
                out[p.name] = round(kib / 1024, 1)
        return out


def _pick_ports(apiserver_port: int) -> dict[str, int]:
    """Free loopback ports for every listener, so clusters can run side by side; a fixed API
    server port (``--apiserver-port``) must be free too."""
    ports = free_ports(len(PORT_NAMES))
    if apiserver_port:
        if port_in_use(apiserver_port):
            raise DevClusterError(f"API server port {apiserver_port} is already in use")
        ports = [*[p for p in ports if p != apiserver_port][: len(PORT_NAMES) - 1], apiserver_port]
    return dict(zip(PORT_NAMES, ports, strict=True))


class _Boot:
    """One start of the control plane, one method per component.

    Each step spawns its component (recorded in state.json at once, so ``down`` can stop it
    however the start ends) and waits for what the later steps need; a component that exits, or
    the deadline passing, fails the start with the tail of the relevant log.
    """

    def __init__(
        self,
        dev: DevCluster,
        state: ClusterState,
        pki: certs.Pki,
        *,
        deadline: float,
        die_with_parent: bool,
    ) -> None:
        self.dev = dev
        self.state = state
        self.pki = pki
        self.ports = state.ports
        self.deadline = deadline
        self.die_with_parent = die_with_parent
        self.etcd_url = f"http://127.0.0.1:{self.ports['etcd']}"
        self.kubeconfigs = self._write_kubeconfigs()
        self.api = _Api(state.server, pki)

    def _write_kubeconfigs(self) -> dict[str, Path]:
        """The admin's kubeconfig (what users get), and one per component with its own client
        certificate, so RBAC sees the identities a kubeadm cluster has."""

        def write(path: Path, user: str) -> Path:
            return write_kubeconfig(
                path,
                self.state.server,
                self.pki.ca_crt,
                self.pki.client_crt(user),
                self.pki.client_key(user),
                user=user,
            )

        write(self.dev.kubeconfig, "admin")
        return {
            name: write(self.dev.state_dir / "kubeconfigs" / f"{name}.kubeconfig", name)
            for name in ("kube-controller-manager", "kube-scheduler", "kwok")
        }

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        """Run the built binary ``name`` with its log in logs/, and record it right away."""
        proc, info = spawn(
            name,
            [str(self.dev.binaries.path(name)), *args],
            self.dev.logs_dir / f"{name}.log",
            env=env,
            cwd=self.dev.state_dir,
            die_with_parent=self.die_with_parent,
        )
        self.dev._popens[proc.pid] = proc
        self.state.processes.append(info)
        self.dev._save_state(self.state)

    def _wait_for(self, what: str, check: Callable[[], bool], log_of: str) -> None:
        """Poll ``check``; fail early when a process died, or at the deadline."""
        while not check():
            dead = [p.name for p in self.state.processes if not p.alive()]
            if dead:
                raise DevClusterError(
                    f"{', '.join(dead)} exited while waiting for {what}; log of {dead[0]}:\n"
                    + _log_tail(self.dev.logs_dir / f"{dead[0]}.log")
                )
            if time.monotonic() > self.deadline:
                raise DevClusterError(
                    f"timed out waiting for {what}; log of {log_of}:\n"
                    + _log_tail(self.dev.logs_dir / f"{log_of}.log")
                )
            time.sleep(0.1)

    def etcd(self) -> None:
        """etcd first: the API server keeps everything there."""
        peer_url = f"http://127.0.0.1:{self.ports['etcd_peer']}"
        self._spawn(
            "etcd",
            [
                "--name=kubetune",
                f"--data-dir={self.dev.state_dir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=kubetune={peer_url}",
                "--initial-cluster-state=new",
                # a throw-away dev/test cluster: durability is not wanted, speed is
                "--unsafe-no-fsync=true",
                "--quota-backend-bytes=4294967296",
                "--log-level=warn",
            ],
        )
        self._wait_for("etcd", lambda: _http_ok(f"{self.etcd_url}/health"), "etcd")

    def apiserver(self) -> None:
        """The API server, configured like a kubeadm cluster's (TLS, Node+RBAC authorization,
        ServiceAccount tokens, the aggregation layer); everything else talks only to it."""
        pki = self.pki
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.ports['apiserver']}",
                f"--cert-dir={pki.dir / 'kube-apiserver'}",
                f"--tls-cert-file={pki.apiserver_crt}",
                f"--tls-private-key-file={pki.apiserver_key}",
                f"--client-ca-file={pki.ca_crt}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                # the aggregation layer (front proxy), as a kubeadm cluster has it
                f"--requestheader-client-ca-file={pki.ca_crt}",
                f"--requestheader-allowed-names={certs.FRONT_PROXY_CN}",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki.client_crt('front-proxy-client')}",
                f"--proxy-client-key-file={pki.client_key('front-proxy-client')}",
                # dial webhook (and aggregated API) Services at their EndpointSlice address, not
                # the ClusterIP (no kube-proxy here): how Kueue's webhooks, a local process on a
                # host address, are reached (kubetune/devcluster/kueue.py)
                "--enable-aggregator-routing=true",
                # the only advertise address is 127.0.0.1, which Endpoints may not hold; no pod
                # runs for real, so nothing needs the kubernetes Service's endpoints
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--event-ttl=1h",
                "--v=1",
            ],
        )
        self._wait_for(
            "kube-apiserver /readyz",
            lambda: self.api.get("/readyz", timeout=2)[0] == 200,
            "kube-apiserver",
        )

    def _client_flags(self, name: str) -> list[str]:
        """What the controller-manager and the scheduler share: their own identity, a serving
        port on loopback (self-signed in pki/NAME) and no leader election (one replica)."""
        kc = self.kubeconfigs[name]
        return [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports[name.replace('-', '_')]}",
            f"--cert-dir={self.pki.dir / name}",
            "--leader-elect=false",
        ]

    def controller_manager(self) -> None:
        """All default controllers (garbage collection, Jobs, node lifecycle, pod GC, tokens):
        the operator relies on them as on a real cluster."""
        pki = self.pki
        self._spawn(
            "kube-controller-manager",
            [
                *self._client_flags("kube-controller-manager"),
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_crt}",
                f"--cluster-signing-cert-file={pki.ca_crt}",
                f"--cluster-signing-key-file={pki.ca_key}",
                "--controllers=*",
                "--profiling=false",
                "--v=1",
            ],
        )

    def scheduler(self) -> None:
        """The real scheduler, so placement (GPUs, selectors, gangs) is decided as in production."""
        flags = self._client_flags("kube-scheduler")
        self._spawn("kube-scheduler", [*flags, "--profiling=false", "--v=1"])

    def kwok(self) -> None:
        """KWOK plays the kubelet of the fake nodes (annotated ones only) with our Stages."""
        kwok_dir = self.dev.state_dir / "kwok"
        stages = kwok_dir / "stages.yaml"
        stages.parent.mkdir(parents=True, exist_ok=True)
        stages.write_text(manifests.stages_yaml())
        # KWOK also loads ~/.kwok/kwok.yaml when it exists: give it a private HOME.
        home = kwok_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        self._spawn(
            "kwok",
            [
                f"--kubeconfig={self.kubeconfigs['kwok']}",
                f"--config={stages}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={manifests.FAKE_NODE_SELECTOR}",
                f"--node-ip={NODE_IP}",
                f"--cidr={POD_CIDR}",
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{self.ports['kwok']}",
            ],
            env=dict(os.environ, HOME=str(home)),
        )

    def wait_components_healthy(self) -> None:
        """Waited for only after the nodes are created, so they start meanwhile."""
        for name in ("kube-controller-manager", "kube-scheduler"):
            url = f"https://127.0.0.1:{self.ports[name.replace('-', '_')]}/healthz"
            self._wait_for(f"{name} /healthz", functools.partial(_healthz_insecure, url), name)

    def wait_nodes_ready(self, names: set[str]) -> None:
        """Ready AND without the startup taints: until the node lifecycle controller lifts
        them, pods would wait (tests would see spurious Pending)."""

        def ready() -> bool:
            data = self.api.get_json("/api/v1/nodes")
            if not data:
                return False
            ready = {
                i["metadata"]["name"]
                for i in data.get("items", [])
                if _node_ready(i) and not _startup_tainted(i)
            }
            return names <= ready

        self._wait_for("the fake nodes to become Ready", ready, "kwok")

    def wait_default_service_account(self) -> None:
        """Pods in ``default`` are refused until the controller-manager has created it."""
        self._wait_for(
            "the default ServiceAccount",
            lambda: self.api.get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
            "kube-controller-manager",
        )


def kubectl_cmd(
    kubeconfig: Path | str | None = None, kubectl: Path | str | None = None
) -> list[str]:
    """The kubectl command line to use: ``$KUBETUNE_KUBECTL``, the cached build, or PATH."""
    exe: str | None = str(kubectl) if kubectl else os.environ.get("KUBETUNE_KUBECTL")
    if not exe:
        with contextlib.suppress(DevClusterError, OSError):
            built = Binaries.default().path("kubectl")
            if built.is_file():
                exe = str(built)
    if not exe:
        exe = shutil.which("kubectl")
    if not exe:
        raise DevClusterError("no kubectl found (set KUBETUNE_KUBECTL or build the dev cluster)")
    cmd = [exe]
    kc = kubeconfig or os.environ.get("KUBECONFIG")
    if kc:
        cmd += ["--kubeconfig", str(kc)]
    return cmd


def run_kubectl(
    args: Sequence[str],
    *,
    kubeconfig: Path | str | None = None,
    kubectl: Path | str | None = None,
    input: str | None = None,
    check: bool = True,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    cmd = [*kubectl_cmd(kubeconfig, kubectl), *args]
    proc = subprocess.run(
        cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise DevClusterError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc
