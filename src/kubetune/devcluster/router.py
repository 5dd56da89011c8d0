"""A weighted HTTP router that stands in for a Gateway data plane: ``kubetune dev router``.

The dev cluster has the Gateway API CRDs (:mod:`kubetune.devcluster.gateway`) but no Gateway
implementation, and canary rollouts need their HTTPRoute's weights really followed. This router
serves ONE HTTPRoute (``namespace/name``) the way the Gateway API specifies (v1,
``HTTPRouteRule`` and ``BackendRef`` in ``apis/v1``):

* rule choice: a rule matches when ANY of its ``matches`` does (default: PathPrefix ``/``); a
  match needs its path (``Exact`` or element-wise ``PathPrefix``), ``method``, ``Exact``
  headers and ``Exact`` query params to hold. Across rules the spec's precedence applies: Exact
  path, then the longest prefix, then a method match, then the most header, then the most query
  matches, then the first rule. No matching rule, or no such HTTPRoute: 404.
* backend choice: ``weight / sum(weights)`` of the rule's ``backendRefs`` (default weight 1);
  weight 0 gets no traffic. Unsupported here (always 500, as the spec says for invalid refs,
  in proportion to their weight): kinds other than core ``Service``, a missing Service or
  service port, a cross-namespace ref that no ReferenceGrant allows. A Service with no ready
  endpoint answers 503 (the spec's SHOULD). A rule whose weights are all 0, or without
  backendRefs, answers 500 (no backend may take its traffic).
* endpoints: like a real gateway, from the Service's EndpointSlices (``discovery.k8s.io/v1``;
  the slice port named like the Service port the ref's ``port`` selects; endpoints not marked
  unready), chosen at random per request. No ClusterIP is dialled (there is no kube-proxy).

Ignored: ``hostnames``, ``parentRefs`` (the router is the only "Gateway"), ``filters`` and
``timeouts`` (an upstream timeout applies instead), RegularExpression matches (never match).

It follows changes fast: watches on the HTTPRoute and on the Services, EndpointSlices and
ReferenceGrants of its namespace trigger a rebuild of the whole table within milliseconds; a
poll every ``poll_interval`` (default 1 s) is the fallback, and covers backends in other
namespaces. ``kubetune_router_route_generation`` tells which route generation is applied.

Requests are proxied with aiohttp (method, path, query, body, end-to-end headers, plus
``X-Forwarded-For/Host/Proto``; responses streamed back, encodings untouched). An upstream that
cannot be reached answers 502, one that times out 504, both counted. The router's own endpoints
live on a SEPARATE listener (``metrics_listen``), so no proxied path is shadowed: ``/metrics``
(Prometheus text), ``/healthz``, ``/state`` (the applied table, JSON). Metrics, prefix
``kubetune_router_``: ``requests_total{route,backend,code}``, ``upstream_errors_total{route,
backend,reason}``, ``request_duration_seconds{route,backend}``, ``backend_weight{route,rule,
backend}``, ``route_generation{route}``. ``backend`` is ``<namespace>/<service>:<port>`` (``-``
when no backend was chosen). Responses carry ``x-kubetune-backend`` for debugging.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from yarl import URL

log = logging.getLogger(__name__)

GROUP = "gateway.networking.k8s.io"
ROUTES = f"/apis/{GROUP}/v1"
NO_BACKEND = "-"
BACKEND_HEADER = "x-kubetune-backend"
#: RFC 9110 7.6.1 connection-specific fields (and Host, which aiohttp sets from the URL we
#: dial only when absent: we pass the client's on)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


# -- the route, parsed ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BackendRef:
    """One ``backendRefs[]`` entry with the spec's defaults filled in."""

    name: str
    namespace: str
    port: int | None
    weight: int = 1
    group: str = ""
    kind: str = "Service"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}:{self.port}"


@dataclass(frozen=True)
class RouteMatch:
    """One ``matches[]`` entry (defaults: PathPrefix ``/``, any method, no header/query)."""

    path_type: str = "PathPrefix"
    path: str = "/"
    method: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    query: tuple[tuple[str, str], ...] = ()
    supported: bool = True

    def matches(
        self, method: str, path: str, headers: Mapping[str, str], query: Mapping[str, str]
    ) -> bool:
        if not self.supported or (self.method and method.upper() != self.method):
            return False
        if self.path_type == "Exact":
            if path != self.path:
                return False
        elif not prefix_matches(self.path, path):
            return False
        return all(headers.get(k) == v for k, v in self.headers) and all(
            query.get(k) == v for k, v in self.query
        )

    def precedence(self) -> tuple[int, int, int, int, int]:
        """Bigger wins: Exact path, prefix length, method, header count, query count."""
        return (
            int(self.path_type == "Exact"),
            len(self.path),
            int(self.method is not None),
            len(self.headers),
            len(self.query),
        )


@dataclass(frozen=True)
class Rule:
    index: int
    matches: tuple[RouteMatch, ...]
    backends: tuple[BackendRef, ...]


def prefix_matches(prefix: str, path: str) -> bool:
    """The spec's PathPrefix: element-wise, a trailing ``/`` ignored (``/abc`` matches
    ``/abc``, ``/abc/`` and ``/abc/def``, not ``/abcd``)."""
    prefix = prefix.rstrip("/")
    return not prefix or path == prefix or path.startswith(prefix + "/")


def _exact_pairs(entries: Sequence[Mapping[str, Any]], *, fold: bool) -> tuple[bool, tuple]:
    """(all supported, ((name, value), ...)); only ``Exact`` (the default type) is."""
    ok = all(e.get("type", "Exact") == "Exact" for e in entries)
    pairs = tuple(
        (str(e["name"]).lower() if fold else str(e["name"]), str(e["value"])) for e in entries
    )
    return ok, pairs


def parse_match(match: Mapping[str, Any]) -> RouteMatch:
    path = match.get("path") or {}
    path_type = str(path.get("type", "PathPrefix"))
    headers_ok, headers = _exact_pairs(match.get("headers") or [], fold=True)
    query_ok, query = _exact_pairs(match.get("queryParams") or [], fold=False)
    method = match.get("method")
    return RouteMatch(
        path_type=path_type,
        path=str(path.get("value", "/")),
        method=str(method).upper() if method else None,
        headers=headers,
        query=query,
        supported=headers_ok and query_ok and path_type in ("Exact", "PathPrefix"),
    )


def parse_backend(ref: Mapping[str, Any], namespace: str) -> BackendRef:
    weight = ref.get("weight")
    port = ref.get("port")
    return BackendRef(
        name=str(ref["name"]),
        namespace=str(ref.get("namespace") or namespace),
        port=int(port) if port is not None else None,
        weight=1 if weight is None else int(weight),
        group=str(ref.get("group") or ""),
        kind=str(ref.get("kind") or "Service"),
    )


def parse_route(route: Mapping[str, Any]) -> list[Rule]:
    """An HTTPRoute object's rules, defaults filled in as the CRD's schema would."""
    namespace = str(route["metadata"].get("namespace") or "default")
    rules = []
    for i, rule in enumerate((route.get("spec") or {}).get("rules") or []):
        matches = tuple(parse_match(m) for m in rule.get("matches") or []) or (RouteMatch(),)
        backends = tuple(parse_backend(b, namespace) for b in rule.get("backendRefs") or [])
        rules.append(Rule(i, matches, backends))
    return rules


def select_rule(
    rules: Sequence[Rule],
    method: str,
    path: str,
    headers: Mapping[str, str],
    query: Mapping[str, str],
) -> Rule | None:
    """The rule the spec's precedence picks for a request (None: 404). ``headers``' keys are
    lower case."""
    best: tuple[tuple[int, int, int, int, int], int] | None = None
    chosen = None
    for rule in rules:
        for m in rule.matches:
            if not m.matches(method, path, headers, query):
                continue
            rank = (m.precedence(), -rule.index)
            if best is None or rank > best:
                best, chosen = rank, rule
    return chosen


def choose_backend(backends: Sequence[BackendRef], rng: random.Random) -> BackendRef | None:
    """Pick a backend with probability ``weight / sum(weights)``; None when every weight is 0
    (or there are none)."""
    total = sum(max(b.weight, 0) for b in backends)
    if total <= 0:
        return None
    x = rng.randrange(total)
    for b in backends:
        if b.weight <= 0:
            continue
        if x < b.weight:
            return b
        x -= b.weight
    raise AssertionError("unreachable: x < total")


# -- backends resolved to endpoints -------------------------------------------------------------
@dataclass(frozen=True)
class Resolved:
    """A backend's endpoints, or the status its share of requests gets instead."""

    ref: BackendRef
    endpoints: tuple[tuple[str, int], ...] = ()
    status: int | None = None
    reason: str = ""


def service_endpoints(
    service: Mapping[str, Any], slices: Sequence[Mapping[str, Any]], port: int
) -> tuple[tuple[str, int], ...] | None:
    """The ready ``(address, port)`` endpoints behind ``service``'s port ``port``, from its
    EndpointSlices (None: the Service has no such port). Slices name their ports like the
    Service's ports (an unnamed single port matches by absence of a name)."""
    sports = [p for p in (service.get("spec") or {}).get("ports") or [] if p.get("port") == port]
    if not sports:
        return None
    port_name = sports[0].get("name") or ""
    out: list[tuple[str, int]] = []
    for s in slices:
        if s.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
            continue
        target = [p.get("port") for p in s.get("ports") or [] if (p.get("name") or "") == port_name]
        if not target or target[0] is None:
            continue
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False:
                continue
            out.extend((str(a), int(target[0])) for a in ep.get("addresses") or [])
    return tuple(sorted(set(out)))


def grant_allows(grants: Sequence[Mapping[str, Any]], from_namespace: str, ref: BackendRef) -> bool:
    """Whether a ReferenceGrant (in the ref's namespace) lets HTTPRoutes of ``from_namespace``
    refer to it."""
    for grant in grants:
        spec = grant.get("spec") or {}
        froms = any(
            f.get("group") == GROUP
            and f.get("kind") == "HTTPRoute"
            and f.get("namespace") == from_namespace
            for f in spec.get("from") or []
        )
        tos = any(
            (t.get("group") or "") == ref.group
            and t.get("kind") == ref.kind
            and t.get("name") in (None, "", ref.name)
            for t in spec.get("to") or []
        )
        if froms and tos:
            return True
    return False


@dataclass(frozen=True)
class RouteTable:
    """The applied state of the route: what requests are routed by."""

    route: str
    generation: int | None = None
    rules: tuple[Rule, ...] = ()
    backends: Mapping[str, Resolved] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "generation": self.generation,
            "rules": [
                {
                    "index": r.index,
                    "backends": [
                        {
                            "backend": b.key,
                            "weight": b.weight,
                            "endpoints": [f"{a}:{p}" for a, p in self.backends[b.key].endpoints],
                            "status": self.backends[b.key].status,
                            "reason": self.backends[b.key].reason,
                        }
                        for b in r.backends
                    ],
                }
                for r in self.rules
            ],
        }


# -- the API server ------------------------------------------------------------------------------
class KubeClient:
    """A minimal async client (GET, watch) from a kubeconfig, or in-cluster credentials when no
    kubeconfig is given and none is found."""

    def __init__(self, kubeconfig: Path | str | None = None) -> None:
        from kubernetes import client, config

        cfg = client.Configuration()
        path = kubeconfig or os.environ.get("KUBECONFIG")
        if path or Path("~/.kube/config").expanduser().is_file():
            config.load_kube_config(
                config_file=str(path) if path else None, client_configuration=cfg
            )
        else:
            config.load_incluster_config(client_configuration=cfg)
        self.host = str(cfg.host).rstrip("/")
        self.ssl: ssl.SSLContext | bool = False
        if self.host.startswith("https"):
            if cfg.verify_ssl:
                context = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
            else:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if cfg.cert_file:
                context.load_cert_chain(cfg.cert_file, cfg.key_file)
            self.ssl = context
        token = cfg.get_api_key_with_prefix("authorization")
        self.headers = {"Authorization": token} if token else {}
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self.headers, connector=aiohttp.TCPConnector(ssl=self.ssl)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, path: str, **params: str) -> dict[str, Any] | None:
        """The object or list at ``path``; None when it does not exist (404)."""
        timeout = aiohttp.ClientTimeout(total=10)
        async with self.session.get(self.host + path, params=params, timeout=timeout) as resp:
            if resp.status == 404:
                return None
            resp.raise_for_status()
            data: dict[str, Any] = await resp.json()
            return data

    async def watch(self, path: str, **params: str) -> AsyncIterator[dict[str, Any]]:
        """Events of a watch on ``path`` until the server ends it (``timeoutSeconds``)."""
        query = {"watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": "300", **params}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with self.session.get(self.host + path, params=query, timeout=timeout) as resp:
            resp.raise_for_status()
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)


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
                raise  # mid-body: counted already, nothing more can be sent
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
            await resp.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
            except (aiohttp.ClientError, TimeoutError):  # the status is sent: cut the body
                self.metrics.upstream_errors.labels(self.key, backend, "stream").inc()
                raise
            finally:
                self._count(resp, backend, started)
            await resp.write_eof()
        return resp

    def _count(self, resp: web.StreamResponse, backend: str, started: float) -> web.StreamResponse:
        self.metrics.requests.labels(self.key, backend, str(resp.status)).inc()
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


def local_backend_manifests(
    name: str, namespace: str, host: str, port: int, *, service_port: int = 80
) -> list[dict[str, Any]]:
    """A selector-less Service ``name`` (port ``service_port``, named ``http``) and the
    EndpointSlice that points it at ``host:port``: how a process outside the cluster (a local
    model server) becomes a backendRef target. The API server refuses loopback endpoint
    addresses: ``host`` must be an address of this machine such as
    :func:`kubetune.devcluster.kueue.host_ipv4`."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "ports": [
                    {"name": "http", "port": service_port, "protocol": "TCP", "targetPort": port}
                ]
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {
                    "kubernetes.io/service-name": name,
                    # keeps the EndpointSlice controller's hands off it
                    "endpointslice.kubernetes.io/managed-by": "kubetune-dev-router",
                },
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [host], "conditions": {"ready": True}}],
        },
    ]


def weighted_route(
    name: str, namespace: str, weights: Mapping[str, int], *, port: int = 80
) -> dict[str, Any]:
    """An HTTPRoute with one rule splitting all traffic between Services by ``weights``."""
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "rules": [
                {
                    "backendRefs": [
                        {"name": svc, "port": port, "weight": w} for svc, w in weights.items()
                    ]
                }
            ]
        },
    }
