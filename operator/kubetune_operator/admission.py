"""Gang admission without Kueue: a gang is released to the scheduler only when all of it fits.

The default scheduler places pods one at a time. Lifting a gang's scheduling gates because
its pods exist would let it bind part of the gang (and hold those GPUs idle) while the
rest waits for room. So the gates come off only when a fit check says every pod of the
gang has room at once on nodes that could run it (ready, schedulable, matching selector
and taints), counting what kubetune's own pods hold:

* pods of other kubetune jobs bound to a node hold their requests there;
* pods of other jobs already released but not yet bound are placed first (first fit,
  largest first): they were admitted earlier and will take their room.

What the operator cannot see -- pods of other workloads -- can still make the scheduler
place only part of a gang; the lifecycle releases such a partial gang within
``partial_gang_grace_seconds`` (see ``lifecycle._placement``). With Kueue
(``runPolicy.queueName``) Kueue's quota admission replaces this check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kubetune_operator.gang import unfit_reason
from kubetune_operator.observed import NodeView, PodView
from kubetune_operator.quantities import format_quantity, pod_requests, quantity

Requests = Mapping[str, Decimal]


@dataclass(frozen=True)
class Capacity:
    """What other kubetune jobs hold or are about to take (the job asking excluded)."""

    #: node name -> requests of the live pods bound to it.
    used: Mapping[str, Requests] = field(default_factory=dict)
    #: requests of released pods not bound yet.
    pending: tuple[Requests, ...] = ()

    @classmethod
    def of(cls, pods: Iterable[PodView]) -> Capacity:
        """From the pods of every other job: terminated pods hold nothing; bound pods being
        deleted still hold their room until they are gone."""
        used: dict[str, dict[str, Decimal]] = {}
        pending: list[Requests] = []
        for pod in pods:
            if pod.terminated:
                continue
            requests = dict(pod.requests)
            if pod.bound:
                node = used.setdefault(str(pod.node_name), {})
                for name, amount in requests.items():
                    node[name] = node.get(name, Decimal(0)) + amount
            elif not pod.gates and not pod.deleting:
                pending.append(requests)
        return cls(used, tuple(pending))


@dataclass(frozen=True)
class Verdict:
    """Whether the gang fits now; ``room`` pods of ``size`` would (``ever``: on empty nodes)."""

    fits: bool
    size: int
    room: int
    ever: int
    eligible: int
    asked: str
    #: A more precise account, when there is one (no node could run even one pod).
    why: str | None = None

    def describe(self) -> str:
        if self.why:
            return self.why
        if self.fits:
            return f"all {self.size} pods ({self.asked} each) fit"
        if self.ever < self.size:
            return (
                f"the cluster can never hold the whole gang at once: {self.ever} of its "
                f"{self.size} pods ({self.asked} each) fit on the {self.eligible} nodes that "
                "could run them, even with nothing else running"
            )
        return (
            f"waiting for room: {self.room} of {self.size} pods ({self.asked} each) fit now on "
            f"the {self.eligible} nodes that could run them; the gang is released to the "
            "scheduler when all of them fit, and holds no GPUs meanwhile"
        )


def _copies(free: Mapping[str, Decimal], requests: Requests) -> int:
    """How many pods asking ``requests`` fit into ``free``."""
    counts = [int(free.get(name, Decimal(0)) // amount) for name, amount in requests.items()]
    return max(0, min(counts)) if counts else 1_000_000


def _take(free: dict[str, Decimal], requests: Requests) -> None:
    for name, amount in requests.items():
        free[name] = free.get(name, Decimal(0)) - amount


def admit(
    pod: Mapping[str, Any],
    size: int,
    nodes: Mapping[str, NodeView],
    capacity: Capacity,
) -> Verdict:
    """Would ``size`` copies of ``pod`` (a rendered worker pod) fit at once?"""
    requests = pod_requests(pod)
    asked = ", ".join(f"{k}={format_quantity(v)}" for k, v in sorted(requests.items()))
    if not any(node.allocatable for node in nodes.values()):
        # Nodes that report no resources (yet): unknown, left to the scheduler.
        return Verdict(True, size, size, size, len(nodes), asked)
    free: dict[str, dict[str, Decimal]] = {}
    eligible: list[str] = []
    ever = 0
    for name, node in sorted(nodes.items()):
        allocatable = {k: quantity(v) for k, v in node.allocatable}
        could = unfit_reason(pod, requests, node) is None
        if could:
            ever += _copies(allocatable, requests)  # cordoned or not ready: passing states
        if not node.ready or node.unschedulable:
            continue
        used = capacity.used.get(name, {})
        free[name] = {k: v - used.get(k, Decimal(0)) for k, v in allocatable.items()}
        if could:
            eligible.append(name)
    _place_pending(free, capacity.pending)
    room = sum(_copies(free[n], requests) for n in eligible)
    return Verdict(
        fits=room >= size,
        size=size,
        room=min(room, size),
        ever=min(ever, size),
        eligible=len(eligible),
        asked=asked,
    )


def _place_pending(free: dict[str, dict[str, Decimal]], pending: Sequence[Requests]) -> None:
    """Released pods of other jobs take their room first (first fit, largest first; their
    selectors are not known here, so any node with room will do)."""

    def size(requests: Requests) -> tuple[Decimal, ...]:
        return tuple(amount for _, amount in sorted(requests.items(), key=lambda kv: kv[0]))

    for requests in sorted(pending, key=size, reverse=True):
        for name in sorted(free):
            if _copies(free[name], requests) >= 1:
                _take(free[name], requests)
                break
