"""What every pod runner shares with the agent."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Any

from kubetune.devcluster.nodeagent.config import AgentConfig
from kubetune.devcluster.nodeagent.kubeapi import KubeApi
from kubetune.devcluster.nodeagent.network import PodNetwork
from kubetune.devcluster.nodeagent.peers import Peers

#: the host programs the agent needs, and the Debian packages that ship them
REQUIRED_TOOLS = {"bwrap": "bubblewrap", "ip": "iproute2", "setpriv": "util-linux"}


def find_tools() -> dict[str, str]:
    """Absolute paths of :data:`REQUIRED_TOOLS`; raises naming the missing packages."""
    found = {name: shutil.which(name) for name in REQUIRED_TOOLS}
    missing = sorted(REQUIRED_TOOLS[n] for n, path in found.items() if path is None)
    if missing:
        raise RuntimeError(
            f"the node agent needs {', '.join(missing)} (apt-get install -y {' '.join(missing)})"
        )
    return {name: str(path) for name, path in found.items()}


@dataclass
class AgentContext:
    config: AgentConfig
    api: KubeApi
    network: PodNetwork
    tools: dict[str, str]
    peers: Peers = field(default_factory=Peers)
    allocatable: dict[str, str] = field(default_factory=dict)

    @property
    def host_ip(self) -> str:
        """Every node's InternalIP: the bridge's address, reachable from the host and pods."""
        return self.network.gateway

    def pod_path(self, pod: dict[str, Any], suffix: str = "") -> str:
        meta = pod["metadata"]
        return f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}{suffix}"
