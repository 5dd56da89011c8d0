"""In-cluster API access for the agent's pods, as a kubelet and kube-proxy give it.

The API server listens on the host's loopback only, which a pod (its own network namespace)
cannot reach. The agent forwards ``<bridge gateway>:443`` to it (:class:`ApiForwarder`, plain
TCP: TLS stays end to end between the pod and the API server), every pod's hosts file
resolves the ``kubernetes.default.svc`` names to the gateway, and every container gets the
``KUBERNETES_SERVICE_*`` / ``KUBERNETES_PORT*`` variables the kubelet sets for the
``default/kubernetes`` Service (set whatever the pod's ``enableServiceLinks``), with the host
``kubernetes.default.svc``: a name in the API server certificate's SANs
(:data:`kubetune.devcluster.certs.APISERVER_SANS`), so that clients verify TLS as in a real
cluster (the kubernetes Python client and client-go accept a name as well as an IP). Together
with the projected ServiceAccount token volume the API server adds to each pod
(``kube-api-access-*``), ``load_incluster_config()`` works inside a pod.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import urllib.parse

log = logging.getLogger(__name__)

#: the ``KUBERNETES_SERVICE_HOST`` of every pod (resolved by its hosts file to the gateway)
SERVICE_HOST = "kubernetes.default.svc"
#: the names of the API server the pods' hosts files resolve to the gateway
SERVICE_NAMES = (
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
#: the ``default/kubernetes`` Service's port, on which the agent listens at the gateway
SERVICE_PORT = 443
_CHUNK = 65536


def service_env(host: str = SERVICE_HOST, port: int = SERVICE_PORT) -> dict[str, str]:
    """The variables the kubelet gives every container for the ``kubernetes`` Service."""
    url = f"tcp://{host}:{port}"
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        "KUBERNETES_PORT": url,
        f"KUBERNETES_PORT_{port}_TCP": url,
        f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{port}_TCP_PORT": str(port),
        f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
    }


def upstream_of(server: str) -> tuple[str, int]:
    """(host, port) of a kubeconfig's ``server`` URL (https default port 443)."""
    url = urllib.parse.urlsplit(server)
    if url.scheme not in ("https", "http") or not url.hostname:
        raise ValueError(f"not an API server URL: {server!r}")
    return url.hostname, url.port or (443 if url.scheme == "https" else 80)


class ApiForwarder:
    """A TCP forwarder ``listen`` -> ``upstream``: a thread accepts, a thread per connection
    copies both ways until either side closes."""

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._sock = socket.create_server(listen, reuse_port=False)
        self._sock.settimeout(0.5)
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="api-forwarder", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> ApiForwarder:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting and close every open connection."""
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns) // 2

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if not self._stop.is_set():
                    log.exception("API forwarder: accept failed")
                return
            threading.Thread(
                target=self._serve, args=(client,), name="api-forward", daemon=True
            ).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=10)
        except OSError as exc:
            log.warning("API forwarder: %s:%s unreachable: %s", *self.upstream, exc)
            client.close()
            return
        server.settimeout(None)
        client.settimeout(None)
        with self._lock:
            self._conns.update((client, server))
        try:
            self._pump(client, server)
        finally:
            with self._lock:
                self._conns.difference_update((client, server))
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.close()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        """Copy both ways; a half-close is passed on, the end comes when both are closed."""
        peer = {a: b, b: a}
        open_ = {a, b}
        with selectors.DefaultSelector() as sel:
            for s in open_:
                sel.register(s, selectors.EVENT_READ)
            while open_ and not self._stop.is_set():
                for key, _ in sel.select(timeout=1.0):
                    src = key.fileobj
                    assert isinstance(src, socket.socket)
                    try:
                        data = src.recv(_CHUNK)
                    except OSError:
                        return
                    if data:
                        try:
                            peer[src].sendall(data)
                        except OSError:
                            return
                        continue
                    sel.unregister(src)
                    open_.discard(src)
                    with contextlib.suppress(OSError):
                        peer[src].shutdown(socket.SHUT_WR)
