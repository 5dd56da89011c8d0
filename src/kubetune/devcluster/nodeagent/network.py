"""Pod networking: a bridge per agent, a network namespace and veth pair per pod.

The agent claims the first free bridge ``kt<N>`` (creating a link is atomic, so agents of
side-by-side clusters never share one) and holds ``10.250.<N>.1/24`` on it: the host reaches
every pod IP through that route (the operator dials ``http://<podIP>:<port>``), and pods
reach each other across the bridge. Pod ``10.250.<N>.<k>`` lives in netns ``kt<N>-<uid8>``
whose ``eth0`` is one end of a veth pair, the other end ``kv<N>-<uid8>`` on the bridge.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from dataclasses import dataclass, field

from kubetune.devcluster.nodeagent.config import (
    BRIDGE_PREFIX,
    NETNS_PREFIX,
    POD_NETWORK,
    VETH_PREFIX,
)

MAX_BRIDGES = 250


class NetworkError(Exception):
    pass


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def bridge_name(index: int) -> str:
    return f"{BRIDGE_PREFIX}{index}"


def netns_prefix(index: int) -> str:
    return f"{NETNS_PREFIX}{index}-"


def veth_prefix(index: int) -> str:
    return f"{VETH_PREFIX}{index}-"


@dataclass
class PodNetwork:
    """This agent's bridge and its pod IPs."""

    index: int
    _used: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def bridge(self) -> str:
        return bridge_name(self.index)

    @property
    def gateway(self) -> str:
        return f"{POD_NETWORK}.{self.index}.1"

    @property
    def subnet(self) -> str:
        return f"{POD_NETWORK}.{self.index}.0/24"

    @classmethod
    def claim(cls) -> PodNetwork:
        """Create the first free bridge and give it its gateway address."""
        for index in range(MAX_BRIDGES):
            if ip("link", "add", bridge_name(index), "type", "bridge", check=False).returncode:
                continue
            net = cls(index)
            try:
                ip("addr", "add", f"{net.gateway}/24", "dev", net.bridge)
                ip("link", "set", net.bridge, "up")
            except NetworkError:
                destroy(index)
                raise
            return net
        raise NetworkError(f"no free bridge {BRIDGE_PREFIX}0..{MAX_BRIDGES - 1}")

    def allocate(self) -> str:
        with self._lock:
            host = next((h for h in range(2, 255) if h not in self._used), None)
            if host is None:
                raise NetworkError(f"no free pod IP in {self.subnet}")
            self._used.add(host)
        return f"{POD_NETWORK}.{self.index}.{host}"

    def release(self, pod_ip: str) -> None:
        with self._lock:
            self._used.discard(int(pod_ip.rsplit(".", 1)[1]))

    def names(self, uid: str) -> tuple[str, str]:
        """(netns, host-side veth) of the pod with ``uid``."""
        short = uid.replace("-", "")[:8]
        return netns_prefix(self.index) + short, veth_prefix(self.index) + short

    def attach(self, uid: str, pod_ip: str) -> str:
        """Create the pod's network namespace wired to the bridge; returns its name."""
        netns, veth = self.names(uid)
        try:
            ip("netns", "add", netns)
            ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
            ip("link", "set", veth, "master", self.bridge, "up")
            for args in (
                ("addr", "add", f"{pod_ip}/24", "dev", "eth0"),
                ("link", "set", "eth0", "up"),
                ("link", "set", "lo", "up"),
                ("route", "add", "default", "via", self.gateway),
            ):
                ip("-n", netns, *args)
        except NetworkError:
            self.detach(uid)
            raise
        return netns

    def detach(self, uid: str) -> None:
        """Remove the pod's namespace (its veth pair goes with it)."""
        netns, veth = self.names(uid)
        ip("netns", "del", netns, check=False)
        ip("link", "del", veth, check=False)


def destroy(index: int) -> None:
    """Remove every namespace and veth of agent ``index``, then its bridge (also what a
    crashed agent left behind)."""
    listing = ip("netns", "list", check=False).stdout.split("\n")
    for line in listing:
        name = line.split(" ", 1)[0].strip()
        if name.startswith(netns_prefix(index)):
            ip("netns", "del", name, check=False)
    links = ip("-o", "link", "show", check=False).stdout.splitlines()
    for line in links:
        with contextlib.suppress(IndexError):
            name = line.split(":")[1].strip().split("@")[0]
            if name.startswith(veth_prefix(index)):
                ip("link", "del", name, check=False)
    ip("link", "del", bridge_name(index), check=False)
