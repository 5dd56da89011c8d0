"""Render the Helm chart with the real ``helm`` (the dev cluster's pinned build)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.devcluster import Binaries, DevClusterError

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "kubetune"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
RELEASE = "kubetune"
NAMESPACE = "kubetune-system"


def find_helm() -> Path | None:
    """``$KUBETUNE_HELM``, the cached dev-cluster build (``kubetune dev cluster build``), or
    PATH."""
    env = os.environ.get("KUBETUNE_HELM")
    if env and os.access(env, os.X_OK):
        return Path(env)
    try:
        cached = Binaries.default().path("helm")
    except (DevClusterError, KeyError):
        cached = None
    if cached is not None and os.access(cached, os.X_OK):
        return cached
    found = shutil.which("helm")
    return Path(found) if found else None


def helm_or_skip() -> Path:
    helm = find_helm()
    if helm is None:
        reason = "helm is not built: run `kubetune dev cluster build` (or set KUBETUNE_HELM)"
        if IN_CI:
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    return helm


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(helm_or_skip()), *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def template(
    values: dict[str, Any] | None = None,
    *,
    chart: Path = CHART,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``helm template`` with ``values`` (a values file, so numbers keep their types)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(values or {}, f)
        f.flush()
        return run_helm(
            "template", release, str(chart), "--namespace", namespace, "-f", f.name, check=check
        )


def render(values: dict[str, Any] | None = None, **kw: Any) -> list[dict[str, Any]]:
    """The objects ``helm template`` renders (templates only, no CRDs)."""
    return [d for d in yaml.safe_load_all(template(values, **kw).stdout) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def container_env(deployment: dict[str, Any]) -> dict[str, Any]:
    """name -> value (or valueFrom) of the operator container's env."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}
