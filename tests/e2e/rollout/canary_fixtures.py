"""Fixtures of the canary e2e test: the real operator (with the ModelRollout controller on),
a real Prometheus scraping every second, and the tiny models the servers load.

Imported by the test module (the ``*_fixture`` functions, registered under the names
without the suffix, as tests/e2e/operator_helpers.py does). The operator here is the
module's own: it must start AFTER the ModelRollout and Gateway API CRDs exist (the
controller switches itself on only when the API is served), so the session's shared
operator is stopped first; the ``operator`` fixture of other modules starts that one again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune.devcluster.canary import CanaryLab, CanaryModels, ensure_rollout_crd
from kubetune.devcluster.gateway import GatewayAPI
from kubetune.devcluster.testing import Cluster
from kubetune_trainer.assets.canary_models import ensure_models
from tests.e2e.operator_helpers import OperatorProcess, install, stop_shared_operator
from tests.observability.prometheus_helpers import Prometheus, start


@pytest.fixture(scope="module", name="canary_operator")
def canary_operator_fixture(
    cluster: Cluster, gateway_api: GatewayAPI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The real operator (least-privilege ServiceAccount), started with the rollout API on."""
    ensure_rollout_crd(cluster.kubeconfig, cluster.kubectl_path)
    stop_shared_operator()
    workdir = tmp_path_factory.mktemp("canary-operator")
    replica = OperatorProcess(install(cluster, workdir), workdir, "canary").start()
    try:
        replica.wait_ready(timeout=90)
        yield replica
    finally:
        replica.stop()
        print(replica.log_tail(200))


@pytest.fixture(scope="module", name="canary_prometheus")
def canary_prometheus_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    prom = start(tmp_path_factory.mktemp("canary-prometheus"), scrape_interval="1s")
    try:
        yield prom
    finally:
        prom.stop()


@pytest.fixture(scope="session", name="canary_models")
def canary_models_fixture(tmp_path_factory: pytest.TempPathFactory) -> CanaryModels:
    """The tiny base model and a LoRA adapter trained on it by the real trainer."""
    return CanaryModels(*ensure_models(tmp_path_factory.mktemp("canary-models")))


@pytest.fixture(name="canary_lab")
def canary_lab_fixture(
    cluster: Cluster,
    namespace: str,
    canary_operator: OperatorProcess,
    canary_prometheus: Prometheus,
    canary_models: CanaryModels,
    tmp_path: Path,
) -> CanaryLab:
    return CanaryLab(
        cluster.kubeconfig,
        namespace,
        canary_prometheus.url,
        canary_prometheus.file_sd_dir,
        tmp_path / "lab",
        canary_models,
        kubectl=cluster.kubectl_path,
        log=print,
    )
