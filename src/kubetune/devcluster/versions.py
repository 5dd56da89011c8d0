"""Pinned component versions and the binary cache layout.

The ONE place versions live is ``hack/cluster/versions.env`` in the repository; this module
reads it. Binaries are cached per version outside the repository::

    ${KUBETUNE_CACHE_DIR:-$HOME/.cache/kubetune}/bin/<component>-<version>/<binary>
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

VERSIONS_RELPATH = Path("hack") / "cluster" / "versions.env"

#: component -> binaries it provides
COMPONENT_BINARIES: dict[str, tuple[str, ...]] = {
    "etcd": ("etcd",),
    "kubernetes": ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"),
    "kwok": ("kwok",),
    "helm": ("helm",),
}


class DevClusterError(RuntimeError):
    """Raised when the local development cluster cannot be built, started or used."""


def find_repo_root(start: Path | None = None) -> Path:
    """Return the kubetune repository root (the directory holding hack/cluster/versions.env).

    Looks at ``$KUBETUNE_REPO_ROOT``, then upwards from this file, then upwards from ``start``
    (default: the current directory).
    """
    candidates: list[Path] = []
    env = os.environ.get("KUBETUNE_REPO_ROOT")
    if env:
        candidates.append(Path(env))
    candidates.extend(Path(__file__).resolve().parents)
    here = (start or Path.cwd()).resolve()
    candidates.extend([here, *here.parents])
    for cand in candidates:
        if (cand / VERSIONS_RELPATH).is_file():
            return cand
    raise DevClusterError(
        f"cannot find {VERSIONS_RELPATH} (set KUBETUNE_REPO_ROOT to the kubetune checkout)"
    )


def parse_env_file(path: Path) -> dict[str, str]:
    """Parse a shell ``KEY=value`` file (comments and blank lines ignored)."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        key, sep, value = line.partition("=")
        if not sep:
            continue
        parts = shlex.split(value, comments=True)
        values[key.strip()] = parts[0] if parts else ""
    return values


def cache_dir() -> Path:
    """The binary cache root (``$KUBETUNE_CACHE_DIR`` or ``~/.cache/kubetune``)."""
    env = os.environ.get("KUBETUNE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "kubetune"


@dataclass(frozen=True)
class Versions:
    kubernetes: str
    etcd: str
    kwok: str
    helm: str
    go_min: str

    @classmethod
    def load(cls, repo_root: Path | None = None) -> Versions:
        root = repo_root or find_repo_root()
        env = parse_env_file(root / VERSIONS_RELPATH)
        try:
            return cls(
                kubernetes=env["KUBERNETES_VERSION"],
                etcd=env["ETCD_VERSION"],
                kwok=env["KWOK_VERSION"],
                helm=env["HELM_VERSION"],
                go_min=env.get("GO_MIN_VERSION", "1.26.0"),
            )
        except KeyError as exc:
            raise DevClusterError(f"{VERSIONS_RELPATH} lacks {exc.args[0]}") from exc

    def of(self, component: str) -> str:
        return str(getattr(self, component))


@dataclass(frozen=True)
class Binaries:
    """Paths of the cached binaries for one set of versions."""

    versions: Versions
    root: Path

    @classmethod
    def default(cls, repo_root: Path | None = None) -> Binaries:
        return cls(Versions.load(repo_root), cache_dir() / "bin")

    def component_dir(self, component: str) -> Path:
        return self.root / f"{component}-{self.versions.of(component)}"

    def path(self, binary: str) -> Path:
        for component, names in COMPONENT_BINARIES.items():
            if binary in names:
                return self.component_dir(component) / binary
        raise KeyError(binary)

    def missing(self) -> list[str]:
        """Components whose cache directory is incomplete."""
        out = []
        for component, names in COMPONENT_BINARIES.items():
            d = self.component_dir(component)
            if not (d / ".complete").is_file() or not all(os.access(d / n, os.X_OK) for n in names):
                out.append(component)
        return out

    @property
    def etcd(self) -> Path:
        return self.path("etcd")

    @property
    def kube_apiserver(self) -> Path:
        return self.path("kube-apiserver")

    @property
    def kube_controller_manager(self) -> Path:
        return self.path("kube-controller-manager")

    @property
    def kube_scheduler(self) -> Path:
        return self.path("kube-scheduler")

    @property
    def kubectl(self) -> Path:
        return self.path("kubectl")

    @property
    def kwok(self) -> Path:
        return self.path("kwok")

    @property
    def helm(self) -> Path:
        return self.path("helm")
