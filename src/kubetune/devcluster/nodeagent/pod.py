"""One pod's life on the agent, in its own thread: wait for its ConfigMaps/Secrets, set up
its sandbox and network, run its container, report status, and on deletion stop it
(SIGTERM, the grace period, SIGKILL), clean up and delete the pod object."""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from kubetune.devcluster.nodeagent import apiproxy, sandbox, status
from kubetune.devcluster.nodeagent.context import AgentContext
from kubetune.devcluster.nodeagent.env import (
    ConfigError,
    Objects,
    command_line,
    container_env,
    referenced_objects,
)
from kubetune.devcluster.nodeagent.hosts import HostEntry, resolv_conf
from kubetune.devcluster.nodeagent.kubeapi import ApiError
from kubetune.devcluster.nodeagent.volumes import materialize, plan_mounts, plan_volumes

JSON = dict[str, Any]
log = logging.getLogger(__name__)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_PR_SET_PDEATHSIG = 1


def pod_stem(pod: JSON) -> str:
    """The name of the pod's directory (and log) on the agent: readable and unique."""
    meta = pod["metadata"]
    return f"{meta['namespace']}_{meta['name']}_{str(meta['uid'])[:8]}"


def _die_with_agent() -> None:  # pragma: no cover - runs in the child
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _decode(obj: JSON, secret: bool) -> dict[str, bytes]:
    if secret:
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    data = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return data


class PodRunner(threading.Thread):
    """Runs ``pod``; the agent calls :meth:`request_delete` (deletionTimestamp seen) or
    :meth:`kill` (pod object gone, node gone, agent stopping)."""

    def __init__(self, ctx: AgentContext, pod: JSON) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.ctx = ctx
        self.pod = pod
        self.uid = str(meta["uid"])
        self.node = str(pod["spec"]["nodeName"])
        stem = pod_stem(pod)
        self.dir = ctx.config.pods_dir / stem
        self.log_path = ctx.config.state_dir / "logs" / f"{stem}.log"
        self.container = pod["spec"]["containers"][0]
        self.start_time = status.now()
        self._halt = threading.Event()
        self._grace = 0.0
        self._deleting = False
        self._silent = False
        self.pod_ip: str | None = None
        self.netns: str | None = None

    # -- called by the agent ---------------------------------------------------------------
    def request_delete(self, grace: float) -> None:
        if not self._deleting:
            self._grace, self._deleting = grace, True
            self._halt.set()

    def kill(self, grace: float = 0.0) -> None:
        self._grace, self._silent = grace, True
        self._halt.set()

    @property
    def going(self) -> bool:
        """Whether the pod is being deleted (its directory goes with it)."""
        return self._deleting or self._silent

    # -- the pod's life ------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod %s failed in the agent", self.name)
        finally:
            self._cleanup()
        if self._deleting and not self._silent:
            self._delete_object()

    def _report(self, body: JSON) -> None:
        if self._silent:
            return
        try:
            self.ctx.api.merge_patch(self.ctx.pod_path(self.pod, "/status"), {"status": body})
        except ApiError as exc:
            log.warning("status of %s not written: %s", self.name, exc)

    def _fetch(self, names: set[str], kind: str) -> Objects:
        ns = self.pod["metadata"]["namespace"]
        out: dict[str, dict[str, bytes]] = {}
        for name in sorted(names):
            try:
                obj = self.ctx.api.get(f"/api/v1/namespaces/{ns}/{kind}/{name}")
            except ApiError as exc:
                if exc.code == 404:
                    continue
                raise ConfigError(f"reading {kind} {name!r}: {exc}") from None
            out[name] = _decode(obj, secret=kind == "secrets")
        return out

    def _token(self, audience: str | None, seconds: int) -> str:
        """A ServiceAccount token bound to this pod (TokenRequest), as the kubelet mounts."""
        meta, spec = self.pod["metadata"], self.pod["spec"]
        account = spec.get("serviceAccountName") or "default"
        body: JSON = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": max(seconds, 600),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": self.uid,
                },
                **({"audiences": [audience]} if audience else {}),
            },
        }
        path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token"
        try:
            answer = self.ctx.api.create(path, body)
        except ApiError as exc:
            raise ConfigError(f"token for ServiceAccount {account!r}: {exc}") from None
        return str(answer["status"]["token"])

    def _prepare(self) -> tuple[dict[str, str], list[str], list[Any]]:
        maps, secrets = referenced_objects(self.pod)
        config_maps, secret_data = self._fetch(maps, "configmaps"), self._fetch(secrets, "secrets")
        env = container_env(
            self.pod,
            self.container,
            config_maps,
            secret_data,
            self.ctx.allocatable,
            service_env=apiproxy.service_env(),
        )
        argv = command_line(self.container, env)
        volumes = plan_volumes(
            self.pod,
            config_maps,
            secret_data,
            self.dir,
            self.ctx.config.pvc_root,
            self.ctx.allocatable,
            self._token,
        )
        materialize(volumes, (self.pod["spec"].get("securityContext") or {}).get("fsGroup"))
        return env, argv, plan_mounts(self.container, volumes)

    def _run(self) -> None:
        last = ""
        self.pod_ip = self.ctx.network.allocate()
        # the Downward API (status.podIP/hostIP) sees the addresses the pod is about to get
        self.pod.setdefault("status", {}).update({"podIP": self.pod_ip, "hostIP": self.ctx.host_ip})
        while True:
            if self._halt.is_set():
                return
            try:
                env, argv, mounts = self._prepare()
                break
            except ConfigError as exc:
                if str(exc) != last:
                    last = str(exc)
                    self._report(
                        status.waiting_status(
                            self.pod,
                            self.ctx.host_ip,
                            self.start_time,
                            "CreateContainerConfigError",
                            last,
                        )
                    )
                self._halt.wait(self.ctx.config.config_retry_seconds)
        self.netns = self.ctx.network.attach(self.uid, self.pod_ip)
        spec = self._sandbox(argv, mounts)
        full_env = self._env(env)
        self._execute(spec, full_env)

    def _sandbox(self, argv: list[str], mounts: list[Any]) -> sandbox.SandboxSpec:
        pod_spec, meta = self.pod["spec"], self.pod["metadata"]
        hostname = str(pod_spec.get("hostname") or meta["name"])
        assert self.pod_ip is not None and self.netns is not None
        self.dir.mkdir(parents=True, exist_ok=True)
        files = {
            name: self.dir / name
            for name in ("hosts", "resolv.conf", "hostname", "termination-log")
        }
        files["hosts"].touch()
        files["resolv.conf"].write_text(resolv_conf(meta["namespace"]))
        files["hostname"].write_text(hostname + "\n")
        files["termination-log"].write_text("")
        for name, mode in (
            ("hosts", 0o644),
            ("resolv.conf", 0o644),
            ("hostname", 0o644),
            ("termination-log", 0o666),
        ):
            files[name].chmod(mode)
        entry = HostEntry(self.pod_ip, hostname, meta["namespace"], pod_spec.get("subdomain"))
        self.ctx.peers.add(self.uid, entry, files["hosts"])
        return sandbox.SandboxSpec(
            netns=self.netns,
            hostname=hostname,
            argv=argv,
            mounts=mounts,
            hosts_file=str(files["hosts"]),
            resolv_file=str(files["resolv.conf"]),
            hostname_file=str(files["hostname"]),
            termination_log=str(files["termination-log"]),
            termination_log_path=str(
                self.container.get("terminationMessagePath") or "/dev/termination-log"
            ),
            working_dir=str(self.container.get("workingDir") or "/"),
            user=sandbox.identity(
                pod_spec.get("securityContext") or {}, self.container.get("securityContext") or {}
            ),
            image_paths=self.ctx.config.image_paths,
            bwrap=self.ctx.tools["bwrap"],
            ip=self.ctx.tools["ip"],
            setpriv=self.ctx.tools["setpriv"],
        )

    def _env(self, env: dict[str, str]) -> dict[str, str]:
        """The "image's" variables (PATH to the virtualenv first), then the pod's."""
        base = {
            "PATH": f"{self.ctx.config.venv / 'bin'}:{DEFAULT_PATH}",
            "HOSTNAME": str(self.pod["spec"].get("hostname") or self.pod["metadata"]["name"]),
        }
        return {**base, **env}

    def _execute(self, spec: sandbox.SandboxSpec, env: dict[str, str]) -> None:
        read_fd, write_fd = os.pipe()
        cmd = sandbox.command(spec, sandbox.HostFs(), info_fd=write_fd)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started_at = status.now()
        with self.log_path.open("ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                pass_fds=(write_fd,),
                start_new_session=True,
                preexec_fn=_die_with_agent,
            )
        os.close(write_fd)
        child = self._child_pid(read_fd)
        container_id = f"kubetune-real://{self.uid[:8]}-{proc.pid}"
        if child is not None and proc.poll() is None:
            self._report(
                status.running_status(
                    self.pod,
                    self.ctx.host_ip,
                    self.pod_ip or "",
                    self.start_time,
                    container_id,
                    started_at,
                )
            )
        code = self._wait(proc, child)
        if self._silent or self._deleting:
            return
        termlog = Path(spec.termination_log).read_text(errors="replace")
        message = status.termination_message(
            termlog,
            self._log_tail(),
            code,
            str(self.container.get("terminationMessagePolicy") or "File"),
        )
        end = status.Exit(code, status.exit_reason(code), message, started_at, status.now())
        self._report(
            status.terminated_status(
                self.pod, self.ctx.host_ip, self.pod_ip, self.start_time, container_id, end
            )
        )

    @staticmethod
    def _child_pid(read_fd: int, timeout: float = 30.0) -> int | None:
        """The sandboxed process's host PID, from bwrap's ``--info-fd``."""
        data = b""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([read_fd], [], [], 0.5)
                if not ready:
                    continue
                chunk = os.read(read_fd, 4096)
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(read_fd)
        try:
            return int(json.loads(data)["child-pid"])
        except (ValueError, KeyError):
            return None

    def _wait(self, proc: subprocess.Popen[bytes], child: int | None) -> int:
        """Wait for the container; on a stop request SIGTERM it, SIGKILL after the grace."""
        while proc.poll() is None and not self._halt.wait(0.2):
            pass
        if proc.poll() is None:
            target = child if child is not None else proc.pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGTERM)
            try:
                proc.wait(timeout=self._grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(target, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        code = int(proc.returncode)
        return 128 - code if code < 0 else code

    def _log_tail(self, limit: int = 16384) -> str:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(max(0, self.log_path.stat().st_size - limit))
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def _cleanup(self) -> None:
        self.ctx.peers.remove(self.uid)
        if self.netns is not None:
            self.ctx.network.detach(self.uid)
        if self.pod_ip is not None:
            self.ctx.network.release(self.pod_ip)
        if self.going:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _delete_object(self) -> None:
        """As the kubelet does once the containers are gone: delete now, this very pod."""
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        }
        try:
            self.ctx.api.delete(self.ctx.pod_path(self.pod), options)
        except ApiError as exc:
            if exc.code not in (404, 409):
                log.warning("pod %s not deleted: %s", self.name, exc)
