"""Fixtures of the real-pod tier (DESIGN.md, "Testing tiers", tier 4).

* ``real_cluster`` (session): the ``cluster`` fixture's control plane plus the node agent
  (``kubetune.devcluster.nodeagent``): 2 nodes ``kubetune-real-0/1`` (2 ``nvidia.com/gpu``
  each, tainted ``kubetune.io/real-pods``) whose pods run for real as sandboxed local
  processes. Stopped at the end of the session, leaving no process, network namespace, veth
  or bridge behind.

Needs root and bubblewrap, iproute2, util-linux (``setpriv``); elsewhere the tests are skipped
(with CI=true they fail).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubetune.devcluster import DevClusterError
from kubetune.devcluster.nodeagent.context import find_tools
from kubetune.devcluster.testing import Cluster

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
REAL_NODES = 2


@dataclass
class RealCluster:
    """The ``cluster`` plus the agent's nodes and host directories."""

    cluster: Cluster
    nodes: list[str]
    #: the agent's bridge ``kt<N>`` (pod netns ``kt<N>-<uid8>``, subnet ``10.250.<N>.0/24``)
    bridge_index: int = 0

    @property
    def agent_dir(self) -> Path:
        return self.cluster.dev.node_agent_dir

    def pvc_dir(self, claim: str) -> Path:
        """The host directory every pod mounts for PersistentVolumeClaim ``claim``."""
        path = self.agent_dir / "pvc" / claim
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)
        return path

    def pod_logs(self, namespace: str, pod: str) -> str:
        """Everything the pod's container printed (all pods of that name)."""
        files = sorted((self.agent_dir / "logs").glob(f"{namespace}_{pod}_*.log"))
        return "\n".join(f.read_text(errors="replace") for f in files)


def host_leftovers(index: int) -> list[str]:
    """Network namespaces, veths and the bridge of agent ``index`` still on the host."""
    ip = ["ip", "-o"]
    links = subprocess.run([*ip, "link", "show"], capture_output=True, text=True).stdout
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()]
    names += [line.split(" ")[0] for line in netns.splitlines() if line.strip()]
    return [n for n in names if n == f"kt{index}" or n.startswith((f"kt{index}-", f"kv{index}-"))]


@pytest.fixture(scope="session")
def real_cluster(cluster: Cluster) -> Iterator[RealCluster]:
    problem = None
    if os.geteuid() != 0:
        problem = "the node agent needs root (network namespaces, bubblewrap as root)"
    else:
        try:
            find_tools()
        except RuntimeError as exc:
            problem = str(exc)
    if problem:
        if IN_CI:
            pytest.fail(f"CI=true and real pods cannot run: {problem}", pytrace=False)
        pytest.skip(problem)
    dev = cluster.dev
    try:
        nodes = dev.start_node_agent(REAL_NODES, 2, die_with_parent=True, timeout=90)
    except DevClusterError as exc:
        dev.stop_node_agent()
        pytest.fail(str(exc), pytrace=False)
    index = json.loads((dev.node_agent_dir / "resources.json").read_text())["bridge_index"]
    state = dev.load_state()
    agent = next(p for p in state.processes if p.name == "kubetune-node-agent") if state else None
    try:
        yield RealCluster(cluster, nodes, index)
    finally:
        stuck = dev.stop_node_agent()
        assert not stuck, f"the node agent did not stop: {stuck}"
        assert agent is None or not agent.alive(), "node agent process left running"
        left = cluster.kubectl("get", "nodes", "-o", "name").stdout.split()
        assert not [n for n in left if n.removeprefix("node/") in nodes], left
        assert not host_leftovers(index), f"left on the host: {host_leftovers(index)}"
