"""In-cluster API access on the node agent: the ``kubernetes`` Service's variables, the
hosts-file names of the API server, the TCP forwarder, and what a client inside a pod makes
of them (``load_incluster_config``)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from kubetune.devcluster import certs
from kubetune.devcluster.nodeagent import apiproxy
from kubetune.devcluster.nodeagent.env import container_env
from kubetune.devcluster.nodeagent.hosts import HostEntry, hosts_file
from kubetune.devcluster.nodeagent.peers import Peers

GATEWAY = "10.250.3.1"


def test_service_env_is_what_the_kubelet_sets() -> None:
    env = apiproxy.service_env()
    assert env == {
        "KUBERNETES_SERVICE_HOST": "kubernetes.default.svc",
        "KUBERNETES_SERVICE_PORT": "443",
        "KUBERNETES_SERVICE_PORT_HTTPS": "443",
        "KUBERNETES_PORT": "tcp://kubernetes.default.svc:443",
        "KUBERNETES_PORT_443_TCP": "tcp://kubernetes.default.svc:443",
        "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
        "KUBERNETES_PORT_443_TCP_PORT": "443",
        "KUBERNETES_PORT_443_TCP_ADDR": "kubernetes.default.svc",
    }


def test_service_host_is_in_the_apiserver_certificate() -> None:
    """TLS verification from a pod passes: the host it dials is a SAN of the serving cert."""
    assert f"DNS:{apiproxy.SERVICE_HOST}" in certs.APISERVER_SANS
    for name in apiproxy.SERVICE_NAMES:
        assert f"DNS:{name}" in certs.APISERVER_SANS


def test_service_env_comes_first_and_the_pod_env_overrides_it() -> None:
    container = {
        "name": "c",
        "env": [
            {
                "name": "API",
                "value": "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)",
            },
            {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"},
        ],
    }
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"containers": [container]}}
    env = container_env(pod, container, {}, {}, service_env=apiproxy.service_env())
    assert env["API"] == "https://kubernetes.default.svc:443"
    assert env["KUBERNETES_SERVICE_PORT"] == "6443"
    assert env["KUBERNETES_SERVICE_HOST"] == "kubernetes.default.svc"


def test_hosts_file_resolves_the_api_server_names_to_the_gateway(tmp_path: Path) -> None:
    me = HostEntry("10.250.3.2", "op-0", "kubetune-system")
    lines = hosts_file(me, [me], api_ip=GATEWAY).splitlines()
    api = [ln.split("\t") for ln in lines if ln.startswith(GATEWAY)]
    assert len(api) == 1 and set(api[0][1:]) == set(apiproxy.SERVICE_NAMES)
    assert not [ln for ln in hosts_file(me, [me]).splitlines() if ln.startswith(GATEWAY)]
    # the agent's Peers writes it into every pod's file
    path = tmp_path / "hosts"
    path.touch()
    Peers(api_ip=GATEWAY).add("u", me, path)
    assert f"{GATEWAY}\tkubernetes.default.svc.cluster.local" in path.read_text()


def test_incluster_config_from_the_pod_environment(tmp_path: Path) -> None:
    """The kubernetes client inside a pod: https://kubernetes.default.svc:443, the projected
    token and CA (kube-api-access-*)."""
    from kubernetes.client import Configuration
    from kubernetes.config.incluster_config import InClusterConfigLoader

    (tmp_path / "token").write_text("tok")
    (tmp_path / "ca.crt").write_text("PEM")
    cfg = Configuration()
    InClusterConfigLoader(
        str(tmp_path / "token"), str(tmp_path / "ca.crt"), environ=apiproxy.service_env()
    ).load_and_set(cfg)
    assert cfg.host == "https://kubernetes.default.svc:443"
    assert cfg.ssl_ca_cert == str(tmp_path / "ca.crt")
    assert [v.lower() for v in cfg.api_key.values()] == ["bearer tok"]


@pytest.mark.parametrize(
    "server, expected",
    [
        ("https://127.0.0.1:36443", ("127.0.0.1", 36443)),
        ("https://localhost", ("localhost", 443)),
        ("http://127.0.0.1:8080/", ("127.0.0.1", 8080)),
    ],
)
def test_upstream_of(server: str, expected: tuple[str, int]) -> None:
    assert apiproxy.upstream_of(server) == expected


def test_upstream_of_refuses_garbage() -> None:
    with pytest.raises(ValueError):
        apiproxy.upstream_of("unix:///run/sock")


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    """Echoes upper-cased bytes until the client half-closes, then closes."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data.upper())

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t


def test_forwarder_copies_both_ways_and_passes_half_close() -> None:
    upstream, served = _echo_server()
    fwd = apiproxy.ApiForwarder(("127.0.0.1", 0), upstream.getsockname()[:2]).start()
    try:
        with socket.create_connection(fwd.address, timeout=5) as c:
            c.sendall(b"hello " * 20000)  # larger than one chunk
            c.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := c.recv(65536):
                got += chunk
        assert got == b"HELLO " * 20000
        served.join(timeout=5)
        assert not served.is_alive()
    finally:
        fwd.stop()
        upstream.close()


def test_forwarder_stop_closes_open_connections() -> None:
    upstream = socket.create_server(("127.0.0.1", 0))
    fwd = apiproxy.ApiForwarder(("127.0.0.1", 0), upstream.getsockname()[:2]).start()
    c = socket.create_connection(fwd.address, timeout=5)
    accepted, _ = upstream.accept()  # a long-lived watch, say
    try:
        c.sendall(b"x")
        assert accepted.recv(1) == b"x"
        fwd.stop()
        assert c.recv(1) == b""  # the pod's connection ends with the agent
        with pytest.raises(OSError):
            socket.create_connection(fwd.address, timeout=1)
    finally:
        c.close()
        accepted.close()
        upstream.close()


def test_forwarder_closes_the_client_when_upstream_is_down() -> None:
    dead = socket.create_server(("127.0.0.1", 0))
    address = dead.getsockname()[:2]
    dead.close()
    fwd = apiproxy.ApiForwarder(("127.0.0.1", 0), address).start()
    try:
        with socket.create_connection(fwd.address, timeout=5) as c:
            assert c.recv(1) == b""
    finally:
        fwd.stop()
