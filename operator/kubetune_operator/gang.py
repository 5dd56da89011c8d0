"""The gang of one attempt: who exists, who is placed, who runs, and the restart backoff."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubetune_operator.observed import NodeView, PodView, Taint
from kubetune_operator.quantities import format_quantity, pod_requests, quantity

#: Taints that describe a passing node condition (not-ready, unreachable, pressure,
#: cordoned): they say nothing about whether the node could ever hold the pod.
_TRANSIENT_TAINT_PREFIX = "node.kubernetes.io/"
_REPELLING_EFFECTS = ("NoSchedule", "NoExecute")


def backoff_seconds(restart: int, base: float, cap: float) -> float:
    """Delay before restart number ``restart`` (1-based): ``base * 2^(restart-1)``, capped."""
    if restart <= 0:
        return 0.0
    return float(min(cap, base * (2 ** min(restart - 1, 30))))


@dataclass(frozen=True)
class GangState:
    """Placement and progress of the pods of one attempt."""

    size: int
    by_rank: dict[int, PodView]

    @classmethod
    def of(cls, pods: Sequence[PodView], size: int) -> GangState:
        by_rank: dict[int, PodView] = {}
        for pod in pods:
            if pod.rank is not None:
                by_rank[pod.rank] = pod
        return cls(size, by_rank)

    @property
    def pods(self) -> list[PodView]:
        return [self.by_rank[r] for r in sorted(self.by_rank)]

    @property
    def missing(self) -> list[int]:
        return [r for r in range(self.size) if r not in self.by_rank]

    @property
    def extra(self) -> list[PodView]:
        """Pods with ranks outside the gang (left over from a differently sized gang)."""
        return [p for r, p in self.by_rank.items() if r >= self.size]

    @property
    def gated(self) -> list[PodView]:
        return [p for p in self.pods if p.gated]

    @property
    def ever_released(self) -> bool:
        """Some pod lost its gang gate, so the whole gang existed at some point."""
        return any(not p.gated for p in self.pods)

    @property
    def foreign_gates(self) -> set[str]:
        return {g for p in self.pods for g in p.foreign_gates}

    @property
    def bound(self) -> int:
        return sum(1 for p in self.pods if p.bound)

    @property
    def running(self) -> int:
        return sum(1 for p in self.pods if p.phase == "Running" and not p.deleting)

    @property
    def succeeded(self) -> int:
        return sum(1 for p in self.pods if p.phase == "Succeeded")

    def rank0(self) -> PodView | None:
        return self.by_rank.get(0)

    def scheduler_message(self) -> str | None:
        """The scheduler's explanation for an unplaced pod (PodScheduled=False)."""
        for pod in self.pods:
            cond = pod.scheduled
            if not pod.bound and cond is not None and cond.status == "False" and cond.message:
                return cond.message
        return None

    def waiting_reasons(self) -> list[str]:
        """Why placed containers are not running yet (image pulls, config errors)."""
        out = []
        for pod in self.pods:
            if pod.waiting_reason and pod.waiting_reason not in ("ContainerCreating",):
                text = f"{pod.name}: {pod.waiting_reason}"
                if pod.waiting_message:
                    text += f" ({pod.waiting_message})"
                out.append(text)
        return out


def _tolerates(tolerations: Sequence[Mapping[str, Any]], taint: Taint) -> bool:
    for tol in tolerations:
        effect = tol.get("effect") or ""
        if effect and effect != taint.effect:
            continue
        key = tol.get("key") or ""
        if (tol.get("operator") or "Equal") == "Exists":
            if not key or key == taint.key:
                return True
        elif key == taint.key and (tol.get("value") or "") == taint.value:
            return True
    return False


def unfit_reason(
    pod: Mapping[str, Any], requests: Mapping[str, Decimal], node: NodeView
) -> str | None:
    """Why ``node`` could never run ``pod`` even when empty (selector, taints, allocatable),
    or None when it could."""
    spec = pod.get("spec") or {}
    labels = dict(node.labels)
    selector = spec.get("nodeSelector") or {}
    missing = sorted(k for k, v in selector.items() if labels.get(k) != v)
    if missing:
        return "did not match the nodeSelector (" + ", ".join(missing) + ")"
    for taint in node.taints:
        if taint.effect not in _REPELLING_EFFECTS or taint.key.startswith(_TRANSIENT_TAINT_PREFIX):
            continue
        if not _tolerates(spec.get("tolerations") or [], taint):
            shown = taint.key + (f"={taint.value}" if taint.value else "")
            return f"had a taint {shown}:{taint.effect} the pod does not tolerate"
    if not node.allocatable:
        return None  # not reported (yet): unknown is not "too small"
    allocatable = {k: quantity(v) for k, v in node.allocatable}
    short = [r for r in sorted(requests) if allocatable.get(r, Decimal(0)) < requests[r]]
    if short:
        return "had too little allocatable " + ", ".join(short)
    return None


def never_fits(pod: Mapping[str, Any], nodes: Mapping[str, NodeView] | None) -> str | None:
    """Why no node of the cluster could ever run ``pod`` -- even empty: its requests exceed
    every node's allocatable resources, its nodeSelector matches no node, or every node has
    a taint it does not tolerate -- or None when some node could (or nodes are unknown).

    Current usage is not considered (that is waiting for room, not never fitting), nor are
    cordons and node-condition taints, which pass.
    """
    if not nodes:
        return None
    requests = pod_requests(pod)
    counts: Counter[str] = Counter()
    for node in nodes.values():
        why = unfit_reason(pod, requests, node)
        if why is None:
            return None
        counts[why] += 1
    asked = ", ".join(f"{k}={format_quantity(v)}" for k, v in sorted(requests.items()))
    largest = []
    for resource in sorted(requests):
        best = max(
            (quantity(dict(n.allocatable).get(resource, 0)) for n in nodes.values()),
            default=Decimal(0),
        )
        if best < requests[resource]:
            largest.append(f"{resource} {format_quantity(best)}")
    text = f"0/{len(nodes)} nodes could ever fit it: " + "; ".join(
        f"{n} node(s) {why}" for why, n in sorted(counts.items(), key=lambda kv: -kv[1])
    )
    text += f" (it requests {asked}"
    if largest:
        text += "; the most any node has: " + ", ".join(largest)
    return text + ")"
