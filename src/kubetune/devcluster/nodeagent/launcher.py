"""Start the agent as one of the dev cluster's managed processes, and find its nodes."""

from __future__ import annotations

import sys
from pathlib import Path

from kubetune.devcluster.nodeagent.config import NODE_PREFIX

PROCESS_NAME = "kubetune-node-agent"
STATE_SUBDIR = "nodeagent"


def agent_argv(kubeconfig: Path, state_dir: Path, nodes: int, gpus: int) -> list[str]:
    """The agent's command line (the running interpreter: the virtualenv that stands in for
    the trainer image)."""
    return [
        sys.executable,
        "-m",
        "kubetune.devcluster.nodeagent",
        "--kubeconfig",
        str(kubeconfig),
        "--state-dir",
        str(state_dir),
        "--nodes",
        str(nodes),
        "--gpus",
        str(gpus),
    ]


def node_names(nodes: int) -> list[str]:
    return [f"{NODE_PREFIX}-{i}" for i in range(nodes)]


def is_real_node(name: str) -> bool:
    return name.startswith(f"{NODE_PREFIX}-")
