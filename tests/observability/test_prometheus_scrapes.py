"""A real Prometheus (built from source) scrapes what kubetune runs: a ``kubetune run --local``
training run (file_sd, registered by the CLI) and the operator plus a job's trainer pods on the
dev cluster (static targets, Kubernetes pod discovery with the generated relabeling)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from kubetune.contract.paths import DEFAULT_METRICS_PORT
from kubetune.devcluster.prometheus import (
    OPERATOR_JOB,
    SERVE_JOB,
    TRAINER_JOB,
    TRAINER_LOCAL_POOL,
    PrometheusAPI,
    PrometheusServer,
    render_config,
)
from kubetune.devcluster.testing import Cluster, wait_until
from tests.e2e.operator_helpers import OperatorProcess, install, restricted_namespace, start_running
from tests.observability.prometheus_helpers import (
    Prometheus,
    PromQLError,
    prometheus_binary,
    promtool,
)

REPO = Path(__file__).resolve().parents[2]
LOCAL_JOB = "local-lora-sft"  # examples/local/lora-sft.yaml

pytestmark = pytest.mark.timeout(900)


def test_generated_config_passes_promtool(tmp_path: Path) -> None:
    server = PrometheusServer(tmp_path)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    settings = server.settings(operator_targets=["127.0.0.1:8080"], kubeconfig=kubeconfig)
    config = server.write_config(settings)
    assert yaml.safe_load(config.read_text()) == render_config(settings)
    proc = subprocess.run(
        [promtool(), "check", "config", "--syntax-only", str(config)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    version = subprocess.run([prometheus_binary(), "--version"], capture_output=True, text=True)
    assert "prometheus, version 3.16.0" in version.stdout + version.stderr


def test_bad_query_is_reported(prometheus: Prometheus) -> None:
    with pytest.raises(PromQLError, match="bad_data"):
        prometheus.query("sum(")
    assert prometheus.value("vector(2) + 1") == 3.0


def _run_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("KUBETUNE_CONFIG", "KUBETUNE_OUTPUT_DIR", "KUBETUNE_METRICS_PORT"):
        env.pop(key, None)
    env.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", COLUMNS="200"
    )
    return env


@pytest.mark.trainer
def test_local_run_is_scraped(start_prometheus: Callable[..., Prometheus], tmp_path: Path) -> None:
    pytest.importorskip("torch")
    prom = start_prometheus()
    started = time.time()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubetune.cli.main",
            "run",
            "examples/local/lora-sft.yaml",
            "--local",
            "--nproc",
            "1",
            "--max-steps",
            "12",
            "--output-dir",
            str(tmp_path / "run"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--prometheus-file-sd-dir",
            str(prom.file_sd_dir),
        ],
        env=_run_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not list(prom.file_sd_dir.glob("*.json")), "the run must unregister its target"

    sel = f'{{job="{TRAINER_JOB}",namespace="local",finetunejob="{LOCAL_JOB}"}}'
    window = f"[{math.ceil(time.time() - started) + 60}s]"
    # scraped while it ran (the target is gone now, so over the run's window)
    assert prom.value(f"max_over_time(up{sel}{window})") == 1.0
    steps = prom.value(f"max_over_time(kubetune_trainer_steps_total{sel}{window})")
    assert 0 < steps <= 12
    loss = prom.value(f"last_over_time(kubetune_trainer_loss{sel}{window})")
    assert math.isfinite(loss) and loss > 0
    [series] = prom.query_range(f"kubetune_trainer_loss{sel}", started, time.time(), 1)
    assert series["metric"]["instance"].startswith("127.0.0.1:")
    assert len(series["values"]) >= 2
    # and Prometheus dropped the target once the file was removed
    wait_until(
        lambda: not prom.targets(TRAINER_JOB), timeout=30, what="the local target to go away"
    )


@pytest.fixture
def operator(cluster: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator as a separate process with its least-privilege ServiceAccount."""
    op = OperatorProcess(install(cluster, tmp_path), tmp_path, "prometheus-e2e").start()
    try:
        op.wait_ready()
        yield op
    finally:
        op.stop()


def test_operator_and_trainer_pods_are_scraped(
    cluster: Cluster,
    namespace: str,
    operator: OperatorProcess,
    start_prometheus: Callable[..., Prometheus],
) -> None:
    restricted_namespace(cluster, namespace)
    start_running(cluster, namespace, "scraped")  # 2 worker pods; only rank 0 serves /metrics
    prom = start_prometheus(
        operator_targets=[f"127.0.0.1:{operator.metrics_port}"], kubeconfig=cluster.kubeconfig
    )

    prom.wait_for(f'up{{job="{OPERATOR_JOB}"}} == 1', timeout=60)
    prom.wait_for(f'kubetune_operator_leader{{job="{OPERATOR_JOB}"}} == 1', timeout=30)
    [running] = prom.wait_for(
        f'kubetune_jobs{{job="{OPERATOR_JOB}",namespace="{namespace}",phase="Running"}} == 1',
        timeout=30,
    )
    assert running["metric"]["instance"] == f"127.0.0.1:{operator.metrics_port}"

    # Kubernetes pod discovery through the dev cluster's kubeconfig: rank 0 of the gang, on its
    # metrics port, labelled with the namespace and job. KWOK's pods run nothing, so the
    # target exists but is down; a real pod's would be up.
    targets = wait_until(
        lambda: prom.targets(TRAINER_JOB), timeout=60, what="the trainer pod target"
    )
    assert len(targets) == 1, targets
    labels = targets[0]["labels"]
    assert labels["namespace"] == namespace and labels["finetunejob"] == "scraped"
    assert labels["instance"].endswith(f":{DEFAULT_METRICS_PORT}")
    assert targets[0]["scrapePool"] == TRAINER_JOB
    assert all(t["scrapePool"] != TRAINER_LOCAL_POOL for t in targets)


def test_cli_up_status_down(tmp_path: Path) -> None:
    """``kubetune dev prometheus up|status|down`` as a user runs them (the real binary)."""
    promtool()  # built (or skipped) first
    directory = tmp_path / "prom"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kubetune.cli.main", "dev", "prometheus", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            env=dict(os.environ, KUBETUNE_STATE_DIR=str(tmp_path / "no-cluster")),
        )

    up = cli("up", "--dir", str(directory), "--port", "0", "--scrape-interval", "1s")
    assert up.returncode == 0, up.stderr
    exports = dict(
        line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines() if line
    )
    url = exports["KUBETUNE_PROMETHEUS_URL"]
    prom = PrometheusServer(directory)
    assert exports["KUBETUNE_PROMETHEUS_FILE_SD_DIR"] == str(directory / "file_sd")
    try:
        config = yaml.safe_load((directory / "prometheus.yml").read_text())
        # no dev cluster there: no pod discovery; the operator's default address
        assert [j["job_name"] for j in config["scrape_configs"]] == [
            OPERATOR_JOB,
            TRAINER_LOCAL_POOL,
            SERVE_JOB,
        ]
        again = cli("up", "--dir", str(directory), "--operator", "127.0.0.1:1")  # reconfigures
        assert again.returncode == 0 and f"KUBETUNE_PROMETHEUS_URL={url}" in again.stdout
        wait_until(
            lambda: any(
                t["labels"]["instance"] == "127.0.0.1:1" for t in PrometheusAPI(url).targets()
            ),
            timeout=30,
            what="the reloaded operator target",
        )
        status = cli("status", "--dir", str(directory), "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["url"] == url
    finally:
        down = cli("down", "--dir", str(directory))
    assert down.returncode == 0, down.stderr
    assert prom.running() is None
    assert cli("status", "--dir", str(directory)).returncode == 1
