"""What a run needs on the cluster: the CRDs, and an operator process."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from kubetune.devcluster.cluster import run_kubectl
from kubetune.devcluster.procs import ProcInfo, free_port, spawn, terminate
from kubetune.devcluster.versions import DevClusterError


def apply_crd(crd: Mapping[str, Any], kubeconfig: Path, kubectl: Path | None = None) -> None:
    """Server-side apply a CRD and wait until it is Established."""
    run_kubectl(
        ["apply", "--server-side", "--force-conflicts", "-f", "-"],
        kubeconfig=kubeconfig,
        kubectl=kubectl,
        input=yaml.safe_dump(dict(crd)),
    )
    name = crd["metadata"]["name"]
    deadline = time.monotonic() + 60
    while True:  # kubectl wait fails at once while a new CRD has no conditions yet
        proc = run_kubectl(
            ["wait", "--for=condition=Established", f"crd/{name}", "--timeout=30s"],
            kubeconfig=kubeconfig,
            kubectl=kubectl,
            check=False,
        )
        if proc.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise DevClusterError(f"CRD {name} not Established: {proc.stderr}")
        time.sleep(0.5)


def ensure_rollout_crd(kubeconfig: Path, kubectl: Path | None = None) -> None:
    """Install the ModelRollout CRD: the operator switches its rollout controller on only
    when the API is served at its start."""
    from kubetune.api.crd import rollout_definition

    apply_crd(rollout_definition(), kubeconfig, kubectl)


def ensure_crds(kubeconfig: Path, kubectl: Path | None = None) -> None:
    """Install the FineTuneJob and ModelRollout CRDs (the demo and the benchmark)."""
    from kubetune.api.crd import custom_resource_definition

    apply_crd(custom_resource_definition(), kubeconfig, kubectl)
    ensure_rollout_crd(kubeconfig, kubectl)


@contextlib.contextmanager
def operator_process(
    kubeconfig: Path, log: Path, env: Mapping[str, str] | None = None
) -> Iterator[ProcInfo]:
    """``kubetune operator run`` (leader election on, its own lease) until the block ends;
    yields once it leads. For the demo and the benchmark (tests run their own)."""
    lease_namespace = (env or {}).get("KUBETUNE_OPERATOR_LEASE_NAMESPACE", "kubetune-system")
    namespace = yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace",
                                "metadata": {"name": lease_namespace}})  # fmt: skip
    run_kubectl(["apply", "-f", "-"], kubeconfig=kubeconfig, input=namespace)
    port = free_port()
    environ = dict(os.environ, KUBETUNE_OPERATOR_TERMINATION_GRACE_PERIOD_SECONDS="5")
    environ["KUBETUNE_OPERATOR_LEASE_NAMESPACE"] = lease_namespace
    environ.update(env or {})
    environ.pop("KUBECONFIG", None)
    argv = [sys.executable, "-m", "kubetune.cli.main", "operator", "run"]
    argv += ["--kubeconfig", str(kubeconfig), "--metrics-port", str(port), "--id", "canary-lab"]
    proc, info = spawn("operator", argv, log, env=environ, die_with_parent=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(OSError):
                url = f"http://127.0.0.1:{port}/metrics"
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if "kubetune_operator_leader 1.0" in resp.read().decode():
                        break
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise DevClusterError(f"the operator did not start leading ({log}):\n{tail}")
            time.sleep(0.5)
        yield info
    finally:
        terminate([info], {proc.pid: proc}, timeout=30)
