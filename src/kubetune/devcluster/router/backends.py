"""Backend refs resolved to endpoints (Services, EndpointSlices, ReferenceGrants)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubetune.devcluster.router.routes import GROUP, BackendRef, Rule


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
