"""The router's pure routing: HTTPRoute parsing with the spec's defaults, rule precedence and
the weighted backend choice (kubetune/devcluster/router.py)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from kubetune.devcluster.router import (
    BackendRef,
    choose_backend,
    grant_allows,
    parse_route,
    prefix_matches,
    select_rule,
    service_endpoints,
)


def route(*rules: dict[str, Any], namespace: str = "serving") -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": namespace, "generation": 3},
        "spec": {"rules": list(rules)},
    }


def refs(*weights: int | None) -> list[BackendRef]:
    return [BackendRef(f"b{i}", "ns", 80, 1 if w is None else w) for i, w in enumerate(weights)]


def picks(backends: list[BackendRef], n: int, seed: int = 7) -> Counter[str | None]:
    rng = random.Random(seed)
    return Counter((b.name if (b := choose_backend(backends, rng)) else None) for _ in range(n))


def test_weights_split_proportionally() -> None:
    counts = picks(refs(90, 10), 2000)
    assert counts[None] == 0
    # binomial(2000, 0.1): sd ~13.4, so +-60 is > 4 sd
    assert abs(counts["b1"] - 200) < 60, counts
    assert counts["b0"] + counts["b1"] == 2000


def test_weights_are_not_percentages() -> None:
    counts = picks(refs(3, 1), 4000)
    assert abs(counts["b0"] / 4000 - 0.75) < 0.03, counts


def test_weight_zero_is_never_chosen() -> None:
    counts = picks(refs(0, 5, 0), 1000)
    assert counts == Counter({"b1": 1000})


def test_all_zero_or_no_backends_choose_nothing() -> None:
    assert picks(refs(0, 0), 100) == Counter({None: 100})
    assert choose_backend([], random.Random(0)) is None


def test_same_seed_same_sequence() -> None:
    rng_a, rng_b = random.Random(42), random.Random(42)
    backends = refs(1, 1, 1)
    assert [choose_backend(backends, rng_a) for _ in range(50)] == [
        choose_backend(backends, rng_b) for _ in range(50)
    ]


def test_backend_refs_defaults() -> None:
    rules = parse_route(
        route(
            {
                "backendRefs": [
                    {"name": "base", "port": 8000},
                    {"name": "canary", "port": 8001, "weight": 0, "namespace": "other"},
                    {"name": "svc", "kind": "ServiceImport", "group": "multicluster.x-k8s.io"},
                ]
            }
        )
    )
    (rule,) = rules
    assert rule.backends == (
        BackendRef("base", "serving", 8000, 1, "", "Service"),
        BackendRef("canary", "other", 8001, 0, "", "Service"),
        BackendRef("svc", "serving", None, 1, "multicluster.x-k8s.io", "ServiceImport"),
    )
    assert rule.backends[0].key == "serving/base:8000"
    # no matches: the CRD's default, PathPrefix "/", matches everything
    assert select_rule(rules, "POST", "/anything/at/all", {}, {}) is rule


@pytest.mark.parametrize(
    ("prefix", "path", "ok"),
    [
        ("/abc", "/abc", True),
        ("/abc", "/abc/", True),
        ("/abc/", "/abc/def", True),
        ("/abc", "/abcd", False),
        ("/", "/x", True),
        ("/v1/chat", "/v1/completions", False),
    ],
)
def test_prefix_is_element_wise(prefix: str, path: str, ok: bool) -> None:
    assert prefix_matches(prefix, path) is ok


def test_rule_precedence() -> None:
    rules = parse_route(
        route(
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": []},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}], "backendRefs": []},
            {"matches": [{"path": {"type": "Exact", "value": "/v1/models"}}], "backendRefs": []},
            {
                "matches": [
                    {"path": {"value": "/v1"}, "headers": [{"name": "X-Canary", "value": "yes"}]}
                ],
                "backendRefs": [],
            },
            {"matches": [{"path": {"value": "/v1"}}], "backendRefs": []},  # tie: loses to rule 1
            {"matches": [{"path": {"type": "RegularExpression", "value": ".*"}}]},
        )
    )

    def pick(path: str, headers: dict[str, str] | None = None) -> int | None:
        rule = select_rule(rules, "GET", path, headers or {}, {})
        return None if rule is None else rule.index

    assert pick("/health") == 0
    assert pick("/v1/chat/completions") == 1
    assert pick("/v1/models") == 2
    assert pick("/v1/chat", {"x-canary": "yes"}) == 3
    assert pick("/v1/chat", {"x-canary": "no"}) == 1
    only_exact = parse_route(route({"matches": [{"path": {"type": "Exact", "value": "/a"}}]}))
    assert select_rule(only_exact, "GET", "/b", {}, {}) is None


def test_method_and_query_matches() -> None:
    rules = parse_route(
        route(
            {"matches": [{"method": "POST", "queryParams": [{"name": "model", "value": "canary"}]}]}
        )
    )
    assert select_rule(rules, "POST", "/", {}, {"model": "canary"}) is rules[0]
    assert select_rule(rules, "GET", "/", {}, {"model": "canary"}) is None
    assert select_rule(rules, "POST", "/", {}, {"model": "base"}) is None


def test_endpoints_from_slices_by_port_name() -> None:
    service = {"spec": {"ports": [{"name": "http", "port": 80}, {"name": "m", "port": 9090}]}}
    slices: list[dict[str, Any]] = [
        {
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8000}, {"name": "m", "port": 9000}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
                {"addresses": ["10.0.0.3"]},  # unknown readiness counts as ready
            ],
        },
        {"addressType": "FQDN", "ports": [{"name": "http", "port": 1}], "endpoints": []},
    ]
    assert service_endpoints(service, slices, 80) == (("10.0.0.1", 8000), ("10.0.0.3", 8000))
    assert service_endpoints(service, slices, 9090) == (("10.0.0.1", 9000), ("10.0.0.3", 9000))
    assert service_endpoints(service, slices, 81) is None
    assert service_endpoints(service, [], 80) == ()


def test_reference_grants() -> None:
    ref = BackendRef("model", "models", 80)
    grant = {
        "spec": {
            "from": [
                {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "serving"}
            ],
            "to": [{"group": "", "kind": "Service"}],
        }
    }
    named = {"spec": {**grant["spec"], "to": [{"group": "", "kind": "Service", "name": "x"}]}}
    assert grant_allows([grant], "serving", ref)
    assert not grant_allows([grant], "elsewhere", ref)
    assert not grant_allows([named], "serving", ref)
    assert not grant_allows([], "serving", ref)
