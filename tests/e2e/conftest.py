"""Fixtures for the control plane e2e tier (DESIGN.md, "Testing tiers", tier 2).

* ``cluster`` (session): a real local control plane with KWOK fake GPU nodes, brought up once per
  run (building the binaries from source first if they are not cached) and torn down at the end
  with no process, port or file left behind.
* ``namespace`` (function): a fresh namespace, deleted after the test.
* ``kubectl`` (function): runs the BUILT kubectl against the cluster, returns CompletedProcess.

With CI=true a cluster that cannot start FAILS the run. Elsewhere the e2e tests are skipped only
when the binaries are not cached and no Go toolchain is available to build them.

Environment: ``KUBETUNE_CACHE_DIR`` (binary cache), ``KUBETUNE_E2E_APISERVER_PORT`` (fix the API
server port; default: a free one).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune.devcluster import Binaries, DevCluster, DevClusterError
from kubetune.devcluster.build import find_go
from kubetune.devcluster.procs import port_in_use
from kubetune.devcluster.testing import Cluster, Kubectl, wait_until
from kubetune.devcluster.versions import CLUSTER_COMPONENTS

E2E_DIR = Path(__file__).parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/e2e is an e2e test."""
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


def _cannot_start(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true and the e2e cluster cannot start: {reason}", pytrace=False)
    pytest.fail(reason, pytrace=False)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    try:
        binaries = Binaries.default()
    except DevClusterError as exc:
        _cannot_start(str(exc))
        raise
    missing = binaries.missing(CLUSTER_COMPONENTS)
    if missing and find_go() is None:
        reason = (
            f"e2e cluster binaries are not built ({', '.join(missing)}) and no Go toolchain "
            f">= {binaries.versions.go_min} is installed to build them "
            "(install Go, then run `kubetune dev cluster build`)"
        )
        if IN_CI:
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)

    state_dir = Path(tempfile.mkdtemp(prefix="kubetune-e2e-"))
    dev = DevCluster(state_dir / "cluster", binaries)
    port = int(os.environ.get("KUBETUNE_E2E_APISERVER_PORT", "0") or 0)
    try:
        state = dev.up(apiserver_port=port, build=True, die_with_parent=True, timeout=180)
    except (DevClusterError, OSError) as exc:
        dev.down()
        shutil.rmtree(state_dir, ignore_errors=True)
        _cannot_start(f"{type(exc).__name__}: {exc}")
        raise
    handle = Cluster(dev, binaries, dev.kubeconfig, state.server, dict(state.ports))
    try:
        yield handle
    finally:
        procs = list(state.processes)
        stuck = dev.down()
        shutil.rmtree(state_dir, ignore_errors=True)
        leftovers = [p.name for p in procs if p.alive()]
        busy = [name for name, p in state.ports.items() if port_in_use(p)]
        assert not stuck and not leftovers, f"cluster processes left running: {stuck or leftovers}"
        assert not busy, f"cluster ports still in use after teardown: {busy}"
        assert not state_dir.exists(), f"state directory left behind: {state_dir}"


@pytest.fixture
def kubectl(cluster: Cluster) -> Kubectl:
    """``kubectl("get", "pods", namespace=ns, check=False)`` -> CompletedProcess (the built
    kubectl with the cluster's kubeconfig; ``check=True`` raises AssertionError on failure)."""
    return cluster.kubectl


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount ready), deleted after the test."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    wait_until(
        lambda: (
            cluster.kubectl(
                "get", "serviceaccount", "default", namespace=name, check=False
            ).returncode
            == 0
        ),
        timeout=60,
        what=f"the default ServiceAccount in {name}",
    )
    try:
        yield name
    finally:
        cluster.kubectl(
            "delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False
        )
