"""Pinned component versions and the binary cache layout.

The ONE place versions live is ``data/versions.env`` in this package (shipped with it, and read
by ``data/build.sh`` too). Binaries are cached per version outside the repository::

    ${KUBETUNE_CACHE_DIR:-$HOME/.cache/kubetune}/bin/<component>-<cache key>/<binary>

The cache key is the component's version, except for ``kubernetes``, whose one ``go build`` also
builds Kueue and KWOK (``data/versions.env`` says why): ``kubernetes-v1.36.3+kueue-v0.19.2+kwok-
v0.8.0``, so a cache built without them, or with other versions of them, is rebuilt.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

#: what the dev cluster ships beside its code: the build scripts, pinned versions, KWOK stages
DATA_DIR = Path(__file__).with_name("data")
VERSIONS_ENV = DATA_DIR / "versions.env"

#: component -> binaries it provides
COMPONENT_BINARIES: dict[str, tuple[str, ...]] = {
    "etcd": ("etcd",),
    # kueue and kwok share the kubernetes module graph and `go build` (see
    # :meth:`Versions.cache_key`): the packages they have in common compile once
    "kubernetes": (
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubectl",
        "kueue",
        "kwok",
    ),
    "helm": ("helm",),
    # scrapes the dev cluster and local runs; promtool tests the alert rules (own module graph)
    "prometheus": ("prometheus", "promtool"),
}
#: what the dev cluster itself needs built (prometheus is a separate tool; `up` never builds it)
CLUSTER_COMPONENTS: tuple[str, ...] = ("etcd", "kubernetes", "helm")


class DevClusterError(RuntimeError):
    """Raised when the local development cluster cannot be built, started or used."""


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
    #: the Go module version (v0.3MM.P is Prometheus 3.MM.P; see :attr:`prometheus_release`)
    prometheus: str
    #: Kueue (module sigs.k8s.io/kueue), built with the kubernetes component
    kueue: str
    #: the Gateway API's CRDs (module sigs.k8s.io/gateway-api; YAML only, never built)
    gateway_api: str = ""

    @property
    def prometheus_release(self) -> str:
        """The Prometheus release a module version stands for (v0.316.0 -> 3.16.0)."""
        minor, _, patch = self.prometheus.removeprefix("v0.").partition(".")
        return f"{int(minor) // 100}.{int(minor) % 100}.{patch}"

    @classmethod
    def load(cls) -> Versions:
        env = parse_env_file(VERSIONS_ENV)
        try:
            return cls(
                kubernetes=env["KUBERNETES_VERSION"],
                etcd=env["ETCD_VERSION"],
                kwok=env["KWOK_VERSION"],
                helm=env["HELM_VERSION"],
                go_min=env.get("GO_MIN_VERSION", "1.26.0"),
                prometheus=env["PROMETHEUS_VERSION"],
                kueue=env["KUEUE_VERSION"],
                gateway_api=env["GATEWAY_API_VERSION"],
            )
        except KeyError as exc:
            raise DevClusterError(f"{VERSIONS_ENV} lacks {exc.args[0]}") from exc

    def of(self, component: str) -> str:
        return str(getattr(self, component))

    def cache_key(self, component: str) -> str:
        """What names ``component``'s cache directory (``<component>-<key>``): its version, and
        for ``kubernetes`` Kueue's and KWOK's too (all come out of one ``go build``; build.sh
        agrees)."""
        if component == "kubernetes":
            return f"{self.kubernetes}+kueue-{self.kueue}+kwok-{self.kwok}"
        return self.of(component)


@dataclass(frozen=True)
class Binaries:
    """Paths of the cached binaries for one set of versions."""

    versions: Versions
    root: Path

    @classmethod
    def default(cls) -> Binaries:
        return cls(Versions.load(), cache_dir() / "bin")

    def component_dir(self, component: str) -> Path:
        return self.root / f"{component}-{self.versions.cache_key(component)}"

    def path(self, binary: str) -> Path:
        for component, names in COMPONENT_BINARIES.items():
            if binary in names:
                return self.component_dir(component) / binary
        raise KeyError(binary)

    def missing(self, components: tuple[str, ...] | None = None) -> list[str]:
        """Components (of ``components``; default all) whose cache directory is incomplete."""
        out = []
        for component, names in COMPONENT_BINARIES.items():
            if components is not None and component not in components:
                continue
            d = self.component_dir(component)
            if not (d / ".complete").is_file() or not all(os.access(d / n, os.X_OK) for n in names):
                out.append(component)
        return out
