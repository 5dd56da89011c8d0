"""Gateway API CRDs on the dev cluster: ``kubetune dev gateway up|status|down``.

The rollout tier routes canaries with HTTPRoutes, so the dev cluster needs the Gateway API's
CRDs; there is no Gateway data plane here (``kubetune dev router`` stands in for one). The CRDs
are the RELEASED definitions, unmodified, from the Gateway API's Go module
(``sigs.k8s.io/gateway-api@GATEWAY_API_VERSION``, ``data/versions.env``): the module zip ships
``config/crd/{standard,experimental}``, and the Go module proxy is reachable where GitHub
release assets are not. ``go mod download`` fetches the zip (no build), and the standard
channel's CRDs are copied into the cache, keyed by version::

    ${KUBETUNE_CACHE_DIR:-$HOME/.cache/kubetune}/gateway-api/<version>/standard/*.yaml
                                                 .../standard/index.json  (file, name, kind)

``up`` server-side applies every CRD that ``config/crd/kustomization.yaml`` lists (the standard
channel: GatewayClass, Gateway, HTTPRoute, GRPCRoute, ReferenceGrant, BackendTLSPolicy,
ListenerSet, TCPRoute, TLSRoute, UDPRoute) and waits until they are Established. The
channel's ``safe-upgrades`` ValidatingAdmissionPolicy (it refuses channel downgrades and
pre-v1.5 bundles) is left out: it guards production upgrades, and would outlive ``down`` on a
shared test cluster as a cluster-wide admission policy.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from kubetune.devcluster.build import go_module_dir
from kubetune.devcluster.cluster import DevCluster
from kubetune.devcluster.versions import DevClusterError, Versions, cache_dir

MODULE = "sigs.k8s.io/gateway-api"
GROUP = "gateway.networking.k8s.io"
#: the version the tooling and tests write Gateway API objects in (GA since v1.0)
API_VERSION = f"{GROUP}/v1"
CHANNEL = "standard"
FIELD_MANAGER = "kubetune-dev-gateway"
#: kind -> plural of what every release of the standard channel has (the rest varies)
REQUIRED_KINDS = {
    "GatewayClass": "gatewayclasses",
    "Gateway": "gateways",
    "HTTPRoute": "httproutes",
    "ReferenceGrant": "referencegrants",
}


def crd_cache_dir(version: str, channel: str = CHANNEL) -> Path:
    """Where the CRDs of ``version``'s ``channel`` are cached."""
    return cache_dir() / "gateway-api" / version / channel


def channel_files(module: Path, channel: str = CHANNEL) -> list[Path]:
    """The CRD files of ``channel`` in a Gateway API module directory: those its kustomization
    lists (what ``kubectl apply -k`` would install), or every YAML file of the folder when it
    has no kustomization; only files holding CustomResourceDefinitions."""
    folder = module / "config" / "crd" / channel
    kustomization = folder / "kustomization.yaml"
    if channel == CHANNEL and not kustomization.is_file():
        kustomization = module / "config" / "crd" / "kustomization.yaml"
    files: list[Path] = []
    if kustomization.is_file():
        listed = (yaml.safe_load(kustomization.read_text()) or {}).get("resources") or []
        files = [(kustomization.parent / str(r)).resolve() for r in listed]
    else:
        files = sorted(folder.glob("*.yaml"))
    out = [f for f in files if f.is_file() and _crds_in(f)]
    if not out:
        raise DevClusterError(f"{folder} holds no CustomResourceDefinitions")
    return out


#: PyYAML's C loader when built with libyaml: the CRDs are 1.2 MB, ~8 s for the pure one
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
INDEX = "index.json"


def _crds_in(path: Path) -> list[dict[str, Any]]:
    docs = yaml.load_all(path.read_text(), Loader=_LOADER)  # a safe loader
    return [d for d in docs if isinstance(d, dict) and d.get("kind") == "CustomResourceDefinition"]


def fetch_crds(version: str, *, module: Path | None = None, channel: str = CHANNEL) -> Path:
    """The cache directory of ``version``'s CRDs, filled from the Go module if it is not
    complete yet (written beside it, then renamed into place: a crash leaves no half cache)."""
    target = crd_cache_dir(version, channel)
    if (target / ".complete").is_file() and (target / INDEX).is_file():
        return target
    source = module or go_module_dir(MODULE, version)
    files = channel_files(source, channel)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{channel}-", dir=target.parent))
    try:
        index = []
        for f in files:
            shutil.copyfile(f, tmp / f.name)
            index += [
                {"file": f.name, "name": c["metadata"]["name"], "kind": c["spec"]["names"]["kind"]}
                for c in _crds_in(f)
            ]
        (tmp / INDEX).write_text(json.dumps(index, indent=1))
        (tmp / ".complete").write_text(f"{MODULE}@{version} config/crd/{channel}\n")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_index(directory: Path) -> list[dict[str, str]]:
    """``{file, name, kind}`` of each CRD cached in ``directory`` (written by
    :func:`fetch_crds`; no YAML parsed), checked to hold :data:`REQUIRED_KINDS`."""
    try:
        index: list[dict[str, str]] = json.loads((directory / INDEX).read_text())
    except (OSError, ValueError) as exc:
        raise DevClusterError(f"{directory} has no readable {INDEX}: {exc}") from exc
    kinds = {entry["kind"] for entry in index}
    lacking = [k for k in REQUIRED_KINDS if k not in kinds]
    if lacking:
        raise DevClusterError(f"{directory} lacks the CRDs of {', '.join(lacking)}")
    return index


def dump_all(docs: Iterable[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(list(docs), sort_keys=False)


class GatewayAPI:
    """The Gateway API CRDs on one running dev cluster: ``up`` / ``status`` / ``down``."""

    def __init__(self, cluster: DevCluster, version: str | None = None) -> None:
        self.cluster = cluster
        self.version = version or Versions.load().gateway_api

    def up(self, *, timeout: float = 60.0) -> list[str]:
        """Server-side apply the CRDs and wait until each is Established; their names."""
        if not self.cluster.is_running():
            raise DevClusterError(f"no dev cluster is running in {self.cluster.state_dir}")
        directory = fetch_crds(self.version)
        index = load_index(directory)
        files = sorted({e["file"] for e in index})
        self.cluster.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            f"--field-manager={FIELD_MANAGER}",
            *(f"--filename={directory / f}" for f in files),
            timeout=120,
        )
        names = [e["name"] for e in index]
        deadline = time.monotonic() + timeout
        while True:
            pending = [n for n, ok in self.established(names).items() if not ok]
            if not pending:
                return names
            if time.monotonic() > deadline:
                raise DevClusterError(f"CRDs not Established after {timeout}s: {pending}")
            time.sleep(0.2)

    def established(self, names: Iterable[str] | None = None) -> dict[str, bool]:
        """CRD name -> Established, for ``names`` (default: every CRD of the group installed)."""
        proc = self.cluster.kubectl("get", "crd", "-o", "json", check=False)
        items = json.loads(proc.stdout).get("items", []) if proc.returncode == 0 else []
        found = {}
        for item in items:
            if item["spec"].get("group") != GROUP:
                continue
            conditions = (item.get("status") or {}).get("conditions") or []
            found[str(item["metadata"]["name"])] = any(
                c.get("type") == "Established" and c.get("status") == "True" for c in conditions
            )
        if names is None:
            return found
        return {n: found.get(n, False) for n in names}

    def status(self) -> dict[str, Any]:
        """The pinned version, the installed bundle version and each CRD's readiness."""
        out: dict[str, Any] = {"version": self.version, "running": self.cluster.is_running()}
        if not out["running"]:
            return out
        proc = self.cluster.kubectl("get", "crd", "-o", "json", check=False)
        items = json.loads(proc.stdout).get("items", []) if proc.returncode == 0 else []
        bundles = {
            (i["metadata"].get("annotations") or {}).get(f"{GROUP}/bundle-version")
            for i in items
            if i["spec"].get("group") == GROUP
        }
        established = self.established()
        out.update(
            installed=sorted(b for b in bundles if b),
            crds=established,
            ready=all(established.values())
            and all(f"{p}.{GROUP}" in established for p in REQUIRED_KINDS.values()),
        )
        return out

    def down(self) -> None:
        """Delete the CRDs of the group (and so every Gateway API object)."""
        names = list(self.established())
        if names:
            self.cluster.kubectl(
                "delete",
                "--ignore-not-found",
                "--wait=true",
                *(f"crd/{n}" for n in names),
                check=False,
                timeout=120,
            )
