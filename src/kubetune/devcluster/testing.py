"""Helpers for tests that run against the dev cluster (used by tests/e2e)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kubetune.devcluster.cluster import DevCluster
from kubetune.devcluster.versions import Binaries


class Kubectl(Protocol):
    def __call__(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        namespace: str | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]: ...


@dataclass
class Cluster:
    """What the ``cluster`` fixture yields."""

    dev: DevCluster
    binaries: Binaries
    kubeconfig: Path
    server: str
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def kubectl_path(self) -> Path:
        return self.dev.kubectl_path

    @property
    def helm_path(self) -> Path:
        return self.dev.helm_path

    @property
    def bin_dirs(self) -> list[Path]:
        """Directories holding the built binaries (kubectl, helm, kube-*, kwok, etcd)."""
        return [self.binaries.component_dir(c) for c in ("kubernetes", "helm", "etcd")]

    @property
    def ca_file(self) -> Path:
        return self.dev.pki.ca_crt

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment for subprocesses: KUBECONFIG, KUBETUNE_KUBECTL/HELM, PATH with the
        built binaries first."""
        env = dict(os.environ if base is None else base)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["KUBETUNE_KUBECTL"] = str(self.kubectl_path)
        env["KUBETUNE_HELM"] = str(self.helm_path)
        env["PATH"] = os.pathsep.join([*map(str, self.bin_dirs), env.get("PATH", "")])
        return env

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        namespace: str | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.kubectl_path), "--kubeconfig", str(self.kubeconfig)]
        if namespace:
            cmd += ["--namespace", namespace]
        proc = subprocess.run(
            [*cmd, *args], input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def wait_established(self, crd: str, timeout: float = 90.0) -> None:
        """Wait until ``crd`` (e.g. ``finetunejobs.kubetune.io``) is Established.

        ``kubectl wait`` errors out instead of waiting while a just-created CRD has no
        conditions yet (a busy API server can take a moment), so it is retried."""
        wait_until(
            lambda: (
                self.kubectl(
                    "wait",
                    "--for=condition=Established",
                    "--timeout=30s",
                    f"crd/{crd}",
                    check=False,
                    timeout=45,
                ).returncode
                == 0
            ),
            timeout=timeout,
            interval=0.5,
            what=f"CRD {crd} to be established",
        )

    def helm(
        self, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.helm_path), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc


def wait_until(
    predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.25, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns a truthy value (returned) or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or predicate} (last: {last!r})"
    )
