"""The router itself: the proxy, its metrics, and a thread to run it from synchronous code."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from yarl import URL

from kubetune.devcluster.router.backends import (
    Resolved,
    RouteTable,
    grant_allows,
    service_endpoints,
)
from kubetune.devcluster.router.kubeapi import KubeClient
from kubetune.devcluster.router.routes import (
    BACKEND_HEADER,
    CLIENT_CLOSED,
    HOP_BY_HOP,
    NO_BACKEND,
    ROUTES,
    BackendRef,
    choose_backend,
    parse_route,
    select_rule,
)

log = logging.getLogger(__name__)


# -- the router ----------------------------------------------------------------------------------
class KubeAPI(Protocol):
    """What the router reads the API server with (:class:`KubeClient`; fakes in tests)."""

    async def get(self, path: str, **params: str) -> dict[str, Any] | None: ...

    def watch(self, path: str, **params: str) -> AsyncIterator[dict[str, Any]]: ...

    async def close(self) -> None: ...


class RouterMetrics:
    """The router's Prometheus metrics, in a registry of its own (several routers may share a
    process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ("route", "backend")
        self.requests = Counter(
            "kubetune_router_requests_total",
            "Requests routed, by chosen backend and response status.",
            (*labels, "code"),
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "kubetune_router_upstream_errors_total",
            "Requests whose backend could not be reached (502) or timed out (504).",
            (*labels, "reason"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "kubetune_router_request_duration_seconds",
            "Time from receiving a request to its response's last byte.",
            labels,
            registry=self.registry,
        )
        self.weight = Gauge(
            "kubetune_router_backend_weight",
            "The applied weight of each backendRef of each rule.",
            ("route", "rule", "backend"),
            registry=self.registry,
        )
        self.generation = Gauge(
            "kubetune_router_route_generation",
            "metadata.generation of the HTTPRoute the router applies (-1: no such route).",
            ("route",),
            registry=self.registry,
        )


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class WeightedRouter:
    """Serves one HTTPRoute (see the module docstring). ``await start()`` returns the proxy's
    URL; ``metrics_url`` is the router's own listener. Also an async context manager."""

    def __init__(
        self,
        namespace: str,
        route: str,
        *,
        kubeconfig: Path | str | None = None,
        listen: str = "127.0.0.1:0",
        metrics_listen: str = "127.0.0.1:0",
        poll_interval: float = 1.0,
        upstream_timeout: float = 300.0,
        rng: random.Random | None = None,
        kube: KubeAPI | None = None,
    ) -> None:
        self.namespace = namespace
        self.route = route
        self.key = f"{namespace}/{route}"
        self.listen = parse_listen(listen)
        self.metrics_listen = parse_listen(metrics_listen)
        self.poll_interval = poll_interval
        self.upstream_timeout = upstream_timeout
        self.rng = rng or random.Random()
        self.kube: KubeAPI = kube or KubeClient(kubeconfig)
        self.metrics = RouterMetrics()
        self.table = RouteTable(self.key)
        self.url = ""
        self.metrics_url = ""
        self._dirty = asyncio.Event()
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._runners: list[web.AppRunner] = []
        self._upstream: aiohttp.ClientSession | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> str:
        """Load the route, start following it and listening; the proxy's URL."""
        self._upstream = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=self.upstream_timeout, sock_connect=5),
        )
        await self._apply(await self.load())
        proxy = web.Application(client_max_size=1 << 30)
        proxy.router.add_route("*", "/{tail:.*}", self._proxy)
        admin = web.Application()
        admin.router.add_get("/metrics", self._metrics)
        admin.router.add_get("/healthz", self._healthz)
        admin.router.add_get("/state", self._state)
        self.url = await self._serve(proxy, self.listen)
        self.metrics_url = await self._serve(admin, self.metrics_listen)
        self._tasks.append(asyncio.create_task(self._refresher()))
        for path, params in self._watches():
            self._tasks.append(asyncio.create_task(self._watcher(path, params)))
        return self.url

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        if self._upstream is not None:
            await self._upstream.close()
        await self.kube.close()

    async def __aenter__(self) -> WeightedRouter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, app: web.Application, where: tuple[str, int]) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, where[0], where[1])
        await site.start()
        self._runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    # -- following the route -------------------------------------------------------------------
    async def load(self) -> RouteTable:
        """Read the route and resolve every backend from the API server."""
        route = await self.kube.get(f"{ROUTES}/namespaces/{self.namespace}/httproutes/{self.route}")
        if route is None:
            return RouteTable(self.key)
        rules = parse_route(route)
        resolved: dict[str, Resolved] = {}
        grants: dict[str, list[dict[str, Any]]] = {}
        for ref in {b.key: b for r in rules for b in r.backends}.values():
            resolved[ref.key] = await self._resolve(ref, grants)
        return RouteTable(
            self.key, int(route["metadata"].get("generation") or 0), tuple(rules), resolved
        )

    async def _resolve(self, ref: BackendRef, grants: dict[str, list[dict[str, Any]]]) -> Resolved:
        if ref.group or ref.kind != "Service":
            return Resolved(ref, status=500, reason=f"unsupported kind {ref.group}/{ref.kind}")
        if ref.port is None:
            return Resolved(ref, status=500, reason="no port")
        if ref.namespace != self.namespace:
            if ref.namespace not in grants:
                listed = await self.kube.get(f"{ROUTES}/namespaces/{ref.namespace}/referencegrants")
                grants[ref.namespace] = (listed or {}).get("items") or []
            if not grant_allows(grants[ref.namespace], self.namespace, ref):
                return Resolved(ref, status=500, reason="no ReferenceGrant allows it")
        service = await self.kube.get(f"/api/v1/namespaces/{ref.namespace}/services/{ref.name}")
        if service is None:
            return Resolved(ref, status=500, reason="no such Service")
        slices = await self.kube.get(
            f"/apis/discovery.k8s.io/v1/namespaces/{ref.namespace}/endpointslices",
            labelSelector=f"kubernetes.io/service-name={ref.name}",
        )
        endpoints = service_endpoints(service, (slices or {}).get("items") or [], ref.port)
        if endpoints is None:
            return Resolved(ref, status=500, reason=f"the Service has no port {ref.port}")
        if not endpoints:
            return Resolved(ref, status=503, reason="no ready endpoints")
        return Resolved(ref, endpoints)

    async def _apply(self, table: RouteTable) -> None:
        self.table = table
        self.metrics.weight.clear()
        for rule in table.rules:
            for b in rule.backends:
                self.metrics.weight.labels(self.key, str(rule.index), b.key).set(b.weight)
        gen = -1 if table.generation is None else table.generation
        self.metrics.generation.labels(self.key).set(gen)
        async with self._changed:
            self._changed.notify_all()

    async def wait_generation(self, generation: int, timeout: float = 5.0) -> RouteTable:
        """Wait until the table of route ``generation`` (or a newer one) is applied."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: (self.table.generation or -1) >= generation)
        return self.table

    def _watches(self) -> list[tuple[str, dict[str, str]]]:
        """(path, query) of what the table depends on in the route's namespace."""
        ns = f"namespaces/{self.namespace}"
        return [
            (f"{ROUTES}/{ns}/httproutes", {"fieldSelector": f"metadata.name={self.route}"}),
            (f"/api/v1/{ns}/services", {}),
            (f"/apis/discovery.k8s.io/v1/{ns}/endpointslices", {}),
            (f"{ROUTES}/{ns}/referencegrants", {}),
        ]

    async def _watcher(self, path: str, params: dict[str, str]) -> None:
        """Mark the table dirty on every event of a watch; reconnect when it ends."""
        while True:
            try:
                async for event in self.kube.watch(path, **params):
                    if event.get("type") != "BOOKMARK":
                        self._dirty.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the poll covers what a broken watch misses
                log.debug("watch %s ended: %r", path, exc)
            await asyncio.sleep(1.0)

    async def _refresher(self) -> None:
        """Rebuild the table when a watch saw a change, and every ``poll_interval`` anyway."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), self.poll_interval)
            self._dirty.clear()
            try:
                await self._apply(await self.load())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep routing by the last good table
                log.warning("reading HTTPRoute %s failed: %r", self.key, exc)
                await asyncio.sleep(0.2)

    # -- serving -------------------------------------------------------------------------------
    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        table = self.table
        headers = {k.lower(): v for k, v in request.headers.items()}
        rule = select_rule(table.rules, request.method, request.path, headers, request.query)
        backend = choose_backend(rule.backends, self.rng) if rule else None
        if rule is None or backend is None:
            status = 404 if rule is None else 500
            why = "no matching rule" if rule is None else "no backend with a weight above 0"
            return self._count(web.Response(status=status, text=why + "\n"), NO_BACKEND, started)
        resolved = table.backends[backend.key]
        if resolved.status is not None:
            resp = web.Response(status=resolved.status, text=f"{backend.key}: {resolved.reason}\n")
            return self._count(resp, backend.key, started)
        host, port = self.rng.choice(resolved.endpoints)
        try:
            return await self._forward(request, backend.key, host, port, started)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            if request.transport is None or request.transport.is_closing():
                # the client went away (counted already): nothing can be sent, and aiohttp
                # drops a response to a closed connection without logging an error
                return web.Response(status=CLIENT_CLOSED)
            timed_out = isinstance(exc, TimeoutError)
            reason = "timeout" if timed_out else "connect"
            self.metrics.upstream_errors.labels(self.key, backend.key, reason).inc()
            resp = web.Response(status=504 if timed_out else 502, text=f"{backend.key}: {exc!r}\n")
            return self._count(resp, backend.key, started)

    async def _forward(
        self, request: web.Request, backend: str, host: str, port: int, started: float
    ) -> web.StreamResponse:
        assert self._upstream is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        peer = request.remote or ""
        prior = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        headers["X-Forwarded-Host"] = request.host
        headers["X-Forwarded-Proto"] = request.scheme
        hostport = f"[{host}]" if ":" in host else host
        url = f"http://{hostport}:{port}{request.rel_url.raw_path_qs}"
        body = await request.read()
        async with self._upstream.request(
            request.method,
            URL(url, encoded=True),
            headers=headers,
            data=body or None,
            allow_redirects=False,
        ) as upstream:
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in HOP_BY_HOP:
                    resp.headers.add(k, v)
            resp.headers[BACKEND_HEADER] = backend
            gone = False
            try:
                await resp.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
            except ConnectionResetError:  # the client's doing, not the upstream's
                gone = True
                raise
            except (aiohttp.ClientError, TimeoutError):  # the status is sent: cut the body
                self.metrics.upstream_errors.labels(self.key, backend, "stream").inc()
                raise
            finally:
                self._count(resp, backend, started, CLIENT_CLOSED if gone else None)
            await resp.write_eof()
        return resp

    def _count(
        self, resp: web.StreamResponse, backend: str, started: float, code: int | None = None
    ) -> web.StreamResponse:
        self.metrics.requests.labels(self.key, backend, str(code or resp.status)).inc()
        self.metrics.duration.labels(self.key, backend).observe(time.monotonic() - started)
        if backend != NO_BACKEND and not resp.prepared:
            resp.headers.setdefault(BACKEND_HEADER, backend)
        return resp

    async def _metrics(self, request: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(self.metrics.registry))
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self.table.to_json())


T = TypeVar("T")


class RouterThread:
    """A :class:`WeightedRouter` on an event loop in a thread of its own, for synchronous
    callers (tests, scripts): ``with RouterThread(lambda: WeightedRouter(...)) as url: ...``.
    The loop runs from construction on; ``call`` runs more coroutines on it (e.g. backends a
    test serves)."""

    def __init__(self, router_factory: Callable[[], WeightedRouter]) -> None:
        self._factory = router_factory
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.router: WeightedRouter | None = None

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> str:
        """Create the router on the loop (its asyncio objects belong there) and start it."""

        async def make() -> WeightedRouter:
            return self._factory()

        self.router = self.call(make())
        return self.call(self.router.start())

    def stop(self) -> None:
        """Stop the router and the loop (idempotent)."""
        if self.router is not None:
            router, self.router = self.router, None
            self.call(router.stop())
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    def __enter__(self) -> str:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
