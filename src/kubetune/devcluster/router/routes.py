"""The HTTPRoute, parsed: rules, matches, backend refs, and the weighted choice."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

GROUP = "gateway.networking.k8s.io"
ROUTES = f"/apis/{GROUP}/v1"
NO_BACKEND = "-"
#: the code counted when the client goes away before its answer is sent (nginx's 499)
CLIENT_CLOSED = 499
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
