"""Fixtures of the chaos tier: the e2e tier's dev cluster (real kube-apiserver, etcd,
controller-manager, scheduler; KWOK fake GPU nodes), but a cluster of its own, brought up
for the tests under tests/chaos and torn down after them: the suite restarts etcd and the
API server and deletes nodes, which must not leak into the e2e tier's shared cluster.

Every test here that uses the cluster is marked ``e2e`` and ``slow``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune.devcluster import Binaries, DevCluster, DevClusterError
from kubetune.devcluster.build import find_go
from kubetune.devcluster.testing import Cluster
from kubetune.devcluster.versions import CLUSTER_COMPONENTS
from tests.e2e.conftest import IN_CI, _cannot_start

CHAOS_DIR = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        uses_cluster = "cluster" in getattr(item, "fixturenames", ())
        if CHAOS_DIR in Path(str(item.fspath)).parents and uses_cluster:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    try:
        binaries = Binaries.default()
    except DevClusterError as exc:
        _cannot_start(str(exc))
        raise
    missing = binaries.missing(CLUSTER_COMPONENTS)
    if missing and find_go() is None:
        reason = f"dev cluster binaries are not built ({', '.join(missing)}) and no Go toolchain"
        if IN_CI:
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    state_dir = Path(tempfile.mkdtemp(prefix="kubetune-chaos-"))
    dev = DevCluster(state_dir / "cluster", binaries)
    try:
        state = dev.up(build=True, die_with_parent=True, timeout=180)
    except (DevClusterError, OSError) as exc:
        dev.down()
        shutil.rmtree(state_dir, ignore_errors=True)
        _cannot_start(f"{type(exc).__name__}: {exc}")
        raise
    try:
        yield Cluster(dev, binaries, dev.kubeconfig, state.server, dict(state.ports))
    finally:
        stuck = dev.down()
        shutil.rmtree(state_dir, ignore_errors=True)
        assert not stuck, f"cluster processes left running: {stuck}"
