"""What a node agent is told: its nodes, their capacity, where it keeps its state."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

#: Only pods tolerating this taint land on the real nodes (the KWOK nodes' GPU counts,
#: which the e2e tests rely on, stay as they are).
TAINT_KEY = "kubetune.io/real-pods"
TAINT = {"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}
NODE_POOL = "real"
NODE_PREFIX = "kubetune-real"
#: Each agent claims one /24 of this /16 (bridge ``kt<N>`` holds ``10.250.<N>.1``).
POD_NETWORK = "10.250"
BRIDGE_PREFIX = "kt"
NETNS_PREFIX = "kt"
VETH_PREFIX = "kv"
GPU_RESOURCE = "nvidia.com/gpu"


def default_venv() -> Path:
    """The virtualenv that stands in for the trainer image (the one running the agent)."""
    return Path(sys.prefix)


#: The project's import packages: what the pods run (operator, trainer, CLI).
PROJECT_PACKAGES = ("kubetune", "kubetune_operator", "kubetune_trainer")


def _package_roots() -> list[str]:
    """Where the project's packages are imported from. An editable install maps them with
    an import hook, not sys.path, so a checkout under a hidden directory (/tmp, /home)
    would otherwise be missing in the sandbox."""
    import importlib.util

    roots = []
    for name in PROJECT_PACKAGES:
        spec = importlib.util.find_spec(name)
        for location in (spec.submodule_search_locations or []) if spec else []:
            roots.append(str(Path(location).parent))
    return roots


def default_image_paths() -> tuple[str, ...]:
    """What the "image" is made of: the agent's virtualenv, its base interpreter and every
    import root (editable installs' sources): bound read-only into each sandbox even where
    the host directory above is hidden (``/root/.pyenv``, a checkout under ``/home``)."""
    import os

    paths = [sys.prefix, sys.base_prefix, *sys.path[1:], *_package_roots()]
    real = sorted({os.path.realpath(p) for p in paths if p and os.path.isdir(p)})
    return tuple(p for p in real if not any(p.startswith(q.rstrip("/") + "/") for q in real))


@dataclass(frozen=True)
class AgentConfig:
    """The agent's settings (``python -m kubetune.devcluster.nodeagent --help``)."""

    kubeconfig: Path
    state_dir: Path
    nodes: int = 2
    cpu: str = "8"
    memory: str = "32Gi"
    ephemeral_storage: str = "500Gi"
    pods: str = "32"
    gpus: int = 2
    venv: Path = field(default_factory=default_venv)
    image_paths: tuple[str, ...] = field(default_factory=default_image_paths)
    heartbeat_seconds: float = 10.0
    lease_seconds: int = 40
    #: seconds between retries of a pod whose ConfigMap/Secret is missing
    config_retry_seconds: float = 2.0

    @property
    def node_names(self) -> list[str]:
        return [f"{NODE_PREFIX}-{i}" for i in range(self.nodes)]

    @property
    def pvc_root(self) -> Path:
        """``<state>/pvc/<claimName>``: the host directories standing in for every PVC."""
        return self.state_dir / "pvc"

    @property
    def pods_dir(self) -> Path:
        return self.state_dir / "pods"

    @property
    def resources_file(self) -> Path:
        """What the agent created on the host (bridge), for cleanup after a crash."""
        return self.state_dir / "resources.json"
