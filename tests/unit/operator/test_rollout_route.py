"""Setting a rollout's weights on an HTTPRoute (rollout/route.py): only the two backends of
the target rule change; everything else in the route stays as it was."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubetune.api.rollout import BackendRef
from kubetune_operator.rollout.route import RouteWeights, read_weights, with_weights

BASE = BackendRef(name="base", port=8000)
CAND = BackendRef(name="tuned", port=8000)


def route(*rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "chat", "namespace": "ml", "resourceVersion": "42"},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": f"/{i}"}}],
                    "backendRefs": refs,
                }
                for i, refs in enumerate(rules)
            ],
        },
    }


OTHER_RULE = [{"name": "docs", "port": 80, "weight": 7}]


def test_weights_set_on_both_backends_and_nothing_else() -> None:
    before = route(
        OTHER_RULE,
        [
            {"name": "base", "port": 8000, "weight": 90},
            {"name": "tuned", "port": 8000, "weight": 10},
            {"name": "shadow", "port": 9000, "weight": 0},
        ],
    )
    after = with_weights(before, 1, BASE, CAND, 25)
    assert after is not None
    refs = after["spec"]["rules"][1]["backendRefs"]
    assert refs == [
        {"name": "base", "port": 8000, "weight": 75},
        {"name": "tuned", "port": 8000, "weight": 25},
        {"name": "shadow", "port": 9000, "weight": 0},
    ]
    assert after["spec"]["rules"][0] == before["spec"]["rules"][0]
    assert after["spec"]["rules"][1]["matches"] == before["spec"]["rules"][1]["matches"]
    assert after["metadata"]["resourceVersion"] == "42"  # the replace is fenced by it
    assert before["spec"]["rules"][1]["backendRefs"][0]["weight"] == 90  # input not mutated


def test_the_candidate_backend_is_added_when_missing() -> None:
    before = route([{"name": "base", "port": 8000}])  # weight absent: the default 1
    assert read_weights(before, 0, BASE, CAND) == RouteWeights(baseline=1, candidate=None)
    after = with_weights(before, 0, BASE, CAND, 10)
    assert after is not None
    assert after["spec"]["rules"][0]["backendRefs"] == [
        {"name": "base", "port": 8000, "weight": 90},
        {"name": "tuned", "port": 8000, "weight": 10},
    ]
    assert read_weights(after, 0, BASE, CAND) == RouteWeights(90, 10)


def test_no_write_when_the_route_already_shows_the_weights() -> None:
    shown = route([{"name": "base", "port": 8000, "weight": 100}])
    assert with_weights(shown, 0, BASE, CAND, 0) is None  # weight 0 needs no new backend
    shown = route(
        [
            {"name": "base", "port": 8000, "weight": 50},
            {"name": "tuned", "port": 8000, "weight": 50},
        ]
    )
    assert with_weights(shown, 0, BASE, CAND, 50) is None
    assert with_weights(shown, 0, BASE, CAND, 0) is not None


def test_backends_of_other_kinds_or_namespaces_are_not_ours() -> None:
    refs = [
        {
            "name": "base",
            "port": 8000,
            "kind": "InferencePool",
            "group": "inference.networking.k8s.io",
        },
        {"name": "base", "port": 8000, "namespace": "elsewhere"},
        {"name": "base", "port": 8000, "kind": "Service", "weight": 3},
    ]
    assert read_weights(route(refs), 0, BASE, CAND) == RouteWeights(3, None)
    after = with_weights(route(refs), 0, BASE, CAND, 0)
    assert after is not None
    assert [r.get("weight") for r in after["spec"]["rules"][0]["backendRefs"]] == [None, None, 100]


@pytest.mark.parametrize(
    ("doc", "index", "problem"),
    [
        (route(OTHER_RULE), 0, "no backendRef to the baseline Service base"),
        (route(OTHER_RULE), 3, "has 1 rule(s), no rule 3"),
    ],
)
def test_a_rule_that_cannot_carry_the_rollout_is_explained(
    doc: dict[str, Any], index: int, problem: str
) -> None:
    got = read_weights(doc, index, BASE, CAND)
    assert isinstance(got, str) and problem in got
    with pytest.raises(ValueError, match="rule"):
        with_weights(copy.deepcopy(doc), index, BASE, CAND, 10)
