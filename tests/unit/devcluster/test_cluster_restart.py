"""DevCluster.restart: a control-plane process is stopped and started again with the same
command line, log and port (the chaos suite's API server / etcd restarts), here with a stand-in
"etcd" (a tiny HTTP server answering /health) instead of the real binary."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from kubetune.devcluster.cluster import ClusterState, DevCluster, _http_ok
from kubetune.devcluster.procs import free_port, spawn, terminate
from kubetune.devcluster.versions import DevClusterError

FAKE_ETCD = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _wait(pred: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_restart_replaces_the_process_and_waits_until_healthy(tmp_path: Path) -> None:
    dev = DevCluster(tmp_path / "cluster")
    dev.state_dir.mkdir()
    port = free_port()
    argv = [sys.executable, "-c", FAKE_ETCD, str(port)]
    proc, old = spawn("etcd", argv, dev.logs_dir / "etcd.log", cwd=dev.state_dir)
    dev._popens[proc.pid] = proc
    state = ClusterState(
        state_dir=str(dev.state_dir),
        kubeconfig=str(dev.kubeconfig),
        server="https://127.0.0.1:1",
        ports={"etcd": port},
        processes=[old],
        versions={},
        binaries={},
        started_at=time.time(),
    )
    dev._save_state(state)
    new = None
    try:
        assert _wait(lambda: _http_ok(f"http://127.0.0.1:{port}/health"))
        new = dev.restart("etcd", hard=True, timeout=20)
        assert new.pid != old.pid and new.alive() and not old.alive()
        assert new.argv == argv and new.log == old.log
        # healthy on the same port before restart returned, and recorded in state.json
        assert _http_ok(f"http://127.0.0.1:{port}/health")
        saved = json.loads(dev.state_file.read_text())["processes"]
        assert [p["pid"] for p in saved] == [new.pid]
    finally:
        terminate([p for p in (old, new) if p is not None], dev._popens)


def test_restart_refuses_unknown_or_absent_components(tmp_path: Path) -> None:
    dev = DevCluster(tmp_path / "cluster")
    with pytest.raises(DevClusterError, match="cannot restart"):
        dev.restart("kwok")
    with pytest.raises(DevClusterError, match="no running etcd"):
        dev.restart("etcd")
