"""The faults the chaos suite injects, and the hostile progress server.

Every fault is one of :data:`KINDS`. ``cluster`` faults hit the control plane or the operator
(every job at whatever point of its life it is); ``job`` faults hit one job (a pod, the node
under a pod, rank 0's ``/progress``). The schedule of kinds is drawn from a seed
(:func:`schedule`), so a run is repeatable: the same kinds in the same order against the same
jobs (targets are drawn from the same generator among the candidates of that moment).
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Kind:
    name: str
    scope: str  # "cluster" or "job"
    weight: int
    what: str


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("operator_sigkill", "cluster", 8, "SIGKILL one operator replica, restart it"),
        Kind("leader_failover", "cluster", 8, "SIGKILL the leader; the standby must take over"),
        Kind("apiserver_restart", "cluster", 6, "kill -9 kube-apiserver and start it again"),
        Kind("etcd_restart", "cluster", 6, "kill -9 etcd and start it again"),
        Kind("pod_kill", "job", 15, "delete a live pod of the job (worker or validation)"),
        Kind("node_not_ready", "job", 8, "the node of one of the job's pods goes NotReady"),
        Kind("node_delete", "job", 8, "the Node object of one of the job's pods is deleted"),
        Kind("pod_never_ready", "job", 13, "one pod of the next gang never starts"),
        Kind("progress_slow", "job", 7, "rank 0's /progress answers after 5 s"),
        Kind("progress_huge", "job", 7, "rank 0's /progress streams an endless body"),
        Kind("progress_garbage", "job", 7, "rank 0's /progress answers non-JSON bytes"),
        Kind("progress_redirect", "job", 7, "rank 0's /progress redirects elsewhere"),
    )
}
PROGRESS_MODES = {
    "progress_slow": "slow",
    "progress_huge": "huge",
    "progress_garbage": "garbage",
    "progress_redirect": "redirect",
}


def schedule(n: int, rng: random.Random) -> list[str]:
    """``n`` fault kinds: every kind at least once (when ``n`` allows), the rest drawn by
    weight, in a shuffled order."""
    names = list(KINDS)
    out = names[:n] if n < len(names) else list(names)
    weights = [KINDS[k].weight for k in names]
    out += rng.choices(names, weights=weights, k=n - len(out))
    rng.shuffle(out)
    return out


# -- a pod that never becomes ready ------------------------------------------------------------
#: The container states of a pod that never starts. KWOK's ``kubetune-pod-ready`` Stage turns a
#: Pending pod whose Ready condition is not True into a running one; a real kubelet would
#: report the waiting reason instead. To keep KWOK from "starting" the pod, the fault sets the
#: pod's Ready condition (which the operator does not read: it goes by phase and container
#: states) while the container stays ``waiting`` and the phase ``Pending``.
STUCK_VARIANTS = {
    "ImagePullBackOff": 'Back-off pulling image "kubetune.invalid/trainer:e2e"',
    "ContainerCreating": "",  # silent: e.g. a volume that never mounts
}


def stuck_status(pod: dict[str, Any], reason: str) -> dict[str, Any]:
    """The status patch (merge patch of ``pods/status``) that makes ``pod`` never start."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    waiting: dict[str, Any] = {"reason": reason}
    if STUCK_VARIANTS[reason]:
        waiting["message"] = STUCK_VARIANTS[reason]
    conditions = [
        c
        for c in (pod.get("status") or {}).get("conditions") or []
        if c.get("type") not in ("Ready", "ContainersReady", "Initialized")
    ]
    conditions.append({"type": "Ready", "status": "True", "lastTransitionTime": now})
    containers = [
        {
            "name": c["name"],
            "image": c.get("image", ""),
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": 0,
            "state": {"waiting": waiting},
        }
        for c in (pod.get("spec") or {}).get("containers") or []
    ]
    return {
        "status": {"phase": "Pending", "conditions": conditions, "containerStatuses": containers}
    }


# -- rank 0's /progress, well-behaved or hostile -----------------------------------------------
class ProgressServer:
    """Serves ``GET /<pod ip>/progress``: the document registered for that pod IP, or a hostile
    answer while a mode is set for it (``slow``, ``huge``, ``garbage``, ``redirect``)."""

    SLOW_SECONDS = 5.0
    HUGE_BYTES = 64 * 1024 * 1024

    def __init__(self) -> None:
        self.documents: dict[str, dict[str, Any]] = {}
        self.modes: dict[str, str] = {}
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ip = self.path.strip("/").split("/")[0]
                with outer.lock:
                    outer.hits[ip] = outer.hits.get(ip, 0) + 1
                    doc = outer.documents.get(ip)
                    mode = outer.modes.get(ip)
                # the operator may hang up (as it should on slow and huge answers)
                with contextlib.suppress(OSError):
                    outer._answer(self, doc, mode)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _answer(
        self, h: BaseHTTPRequestHandler, doc: dict[str, Any] | None, mode: str | None
    ) -> None:
        if mode == "slow":
            time.sleep(self.SLOW_SECONDS)
        if mode == "redirect":
            h.send_response(302)
            h.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if mode == "garbage":
            body = b"\x00\xffnot json {{{" + bytes(range(256)) * 4
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return
        if mode == "huge":
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(self.HUGE_BYTES))
            h.end_headers()
            chunk = b'{"state":"training","pad":"' + b"x" * 65000
            sent = 0
            while sent < self.HUGE_BYTES:
                h.wfile.write(chunk)
                sent += len(chunk)
            return
        if doc is None:
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        body = json.dumps(doc).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    @property
    def template(self) -> str:
        return f"http://127.0.0.1:{self.port}/{{pod_ip}}/progress"

    def start(self) -> ProgressServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def serve(self, ip: str, step: int, total: int) -> None:
        with self.lock:
            self.documents[ip] = {
                "state": "training",
                "updatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "step": step,
                "totalSteps": total,
                "loss": 1.0,
            }

    def set_mode(self, ip: str, mode: str | None) -> None:
        with self.lock:
            if mode is None:
                self.modes.pop(ip, None)
            else:
                self.modes[ip] = mode
