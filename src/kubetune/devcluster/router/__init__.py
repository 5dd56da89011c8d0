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

Modules: ``routes`` (parsing, matching, the weighted choice; pure), ``backends`` (refs to
endpoints), ``kubeapi`` (the API reads and watches), ``server`` (the proxy and its metrics),
``manifests`` (Service + EndpointSlice for a local process; a weighted route).
"""

from kubetune.devcluster.router.backends import RouteTable, grant_allows, service_endpoints
from kubetune.devcluster.router.manifests import local_backend_manifests, weighted_route
from kubetune.devcluster.router.routes import (
    BACKEND_HEADER,
    BackendRef,
    Rule,
    choose_backend,
    parse_route,
    prefix_matches,
    select_rule,
)
from kubetune.devcluster.router.server import RouterThread, WeightedRouter

__all__ = [
    "BACKEND_HEADER",
    "BackendRef",
    "RouteTable",
    "RouterThread",
    "Rule",
    "WeightedRouter",
    "choose_backend",
    "grant_allows",
    "local_backend_manifests",
    "parse_route",
    "prefix_matches",
    "select_rule",
    "service_endpoints",
    "weighted_route",
]
