"""The two model servers (``kubetune serve``) and the models they serve."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kubetune.devcluster.canary.scenarios import Faults
from kubetune.devcluster.kueue import host_ipv4
from kubetune.devcluster.procs import ProcInfo, free_port, spawn


# -- the models --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CanaryModels:
    """The tiny base model and the LoRA adapter trained on it."""

    base: Path
    adapter: Path


# -- model servers -----------------------------------------------------------------------------
@dataclass
class ServerProcess:
    """One ``kubetune serve`` process."""

    model_name: str
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    info: ProcInfo

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.address}/health", timeout=2) as resp:
                return int(resp.status) == 200
        except OSError:
            return False


def start_server(
    model_name: str,
    models: CanaryModels,
    log_dir: Path,
    *,
    adapter: bool,
    faults: Faults,
    seed: int,
    threads: int,
) -> ServerProcess:
    host = host_ipv4()  # the API server refuses loopback EndpointSlice addresses
    port = free_port(host)
    argv = [
        sys.executable,
        "-m",
        "kubetune.cli.main",
        "serve",
        str(models.base),
        "--served-model-name",
        model_name,
        "--host",
        host,
        "--port",
        str(port),
        "--threads",
        str(threads),
        *(["--adapter", str(models.adapter)] if adapter else []),
        *faults.argv(seed),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc, info = spawn(
        f"serve-{model_name}",
        argv,
        log_dir / f"serve-{model_name}.log",
        env=env,
        die_with_parent=True,
    )
    return ServerProcess(model_name, host, port, proc, info)
