"""Kueue on the e2e cluster (DESIGN.md, tier 5): the ``kueue`` fixture.

``kueue`` (package scope): Kueue started on the session ``cluster`` (its CRDs, the webhooks for
Kueue's own objects, the webhook Service), ready when yielded: admission and conversion webhooks
answer. Torn down after the package with ``purge``: Kueue's process, webhook configurations, CRDs
(so every Kueue object) and namespace are gone, the shared cluster is as before. It yields a
:class:`tests.e2e.kueue.helpers.KueueEnv` (``apply``, ``get``, ``delete``, ``workload``,
``wait_workload``; ``runner`` and ``state`` underneath); helpers.py also has
``quota_manifests``, ``condition`` and ``is_admitted``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune.devcluster import DevClusterError
from kubetune.devcluster.kueue import KueueRunner
from kubetune.devcluster.testing import Cluster
from tests.e2e.kueue.helpers import KueueEnv


@pytest.fixture(scope="package")
def kueue(cluster: Cluster) -> Iterator[KueueEnv]:
    directory = Path(tempfile.mkdtemp(prefix="kubetune-e2e-kueue-"))
    runner = KueueRunner(cluster.dev, directory, cluster.binaries)
    try:
        state = runner.up(timeout=180, die_with_parent=True)
    except (DevClusterError, OSError) as exc:
        runner.down(purge=True)
        pytest.fail(f"kueue did not start: {exc}", pytrace=False)
    try:
        yield KueueEnv(cluster, runner, state)
    finally:
        stopped = runner.down(purge=True)
        alive = state.process.alive()
        shutil.rmtree(directory, ignore_errors=True)
        assert stopped and not alive, "the kueue process was left running"
