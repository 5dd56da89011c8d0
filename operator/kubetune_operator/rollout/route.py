"""Reading and setting the two weights of a rollout on a Gateway API HTTPRoute.

Only the rule named by ``spec.target.ruleIndex`` is touched, and in it only the baseline's
and the candidate's ``backendRefs`` (other rules, other backends, filters and matches stay
as they are). The write is a full replace carrying the route's ``resourceVersion``, so a
concurrent edit (GitOps, a person) makes it fail with 409 instead of being overwritten; the
next reconcile reads the route again and decides on what is there.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from kubetune.api.rollout import BackendRef

GROUP = "gateway.networking.k8s.io"
VERSION = "v1"
PLURAL = "httproutes"

#: The Gateway API's default backendRef weight.
DEFAULT_WEIGHT = 1


@dataclass(frozen=True)
class RouteWeights:
    """The two weights as the route shows them; None for a backend missing from the rule."""

    baseline: int | None
    candidate: int | None

    def shows(self, candidate_weight: int) -> bool:
        """Whether the rule already sends ``candidate_weight`` % to the candidate."""
        return (self.candidate or 0) == candidate_weight and self.baseline == 100 - candidate_weight


def _is_service(ref: dict[str, Any], name: str, namespace: str) -> bool:
    return (
        ref.get("name") == name
        and ref.get("group", "") in ("", None)
        and ref.get("kind", "Service") == "Service"
        and ref.get("namespace", namespace) == namespace
    )


def _find(refs: list[dict[str, Any]], backend: BackendRef, namespace: str) -> int | None:
    return next(
        (i for i, ref in enumerate(refs) if _is_service(ref, backend.name, namespace)), None
    )


def _rule(route: dict[str, Any], rule_index: int) -> dict[str, Any] | str:
    rules = (route.get("spec") or {}).get("rules") or []
    if rule_index >= len(rules):
        return f"has {len(rules)} rule(s), no rule {rule_index}"
    rule: dict[str, Any] = rules[rule_index]
    return rule


def read_weights(
    route: dict[str, Any], rule_index: int, baseline: BackendRef, candidate: BackendRef
) -> RouteWeights | str:
    """The weights in the target rule, or why the rule cannot carry the rollout."""
    namespace = str((route.get("metadata") or {}).get("namespace") or "")
    rule = _rule(route, rule_index)
    if isinstance(rule, str):
        return rule
    refs = rule.get("backendRefs") or []
    b, c = _find(refs, baseline, namespace), _find(refs, candidate, namespace)
    if b is None:
        return f"rule {rule_index} has no backendRef to the baseline Service {baseline.name}"
    return RouteWeights(
        baseline=int(refs[b].get("weight", DEFAULT_WEIGHT)),
        candidate=None if c is None else int(refs[c].get("weight", DEFAULT_WEIGHT)),
    )


def with_weights(
    route: dict[str, Any],
    rule_index: int,
    baseline: BackendRef,
    candidate: BackendRef,
    candidate_weight: int,
) -> dict[str, Any] | None:
    """A copy of ``route`` sending ``candidate_weight`` % to the candidate and the rest to
    the baseline (the candidate's backendRef added when missing and needed), or None when the route
    already shows that. Raises ValueError when the rule cannot carry the rollout."""
    weights = read_weights(route, rule_index, baseline, candidate)
    if isinstance(weights, str):
        raise ValueError(weights)
    if weights.shows(candidate_weight):
        return None
    new = copy.deepcopy(route)
    namespace = str((new.get("metadata") or {}).get("namespace") or "")
    rule = new["spec"]["rules"][rule_index]
    refs: list[dict[str, Any]] = rule.setdefault("backendRefs", [])
    at = _find(refs, baseline, namespace)
    assert at is not None  # read_weights checked it
    refs[at]["weight"] = 100 - candidate_weight
    at = _find(refs, candidate, namespace)
    if at is None:
        if candidate_weight == 0:
            return new  # no traffic: no backendRef needed
        refs.append({"name": candidate.name, "port": candidate.port, "weight": candidate_weight})
    else:
        refs[at]["weight"] = candidate_weight
    return new
