"""What :func:`~kubetune_operator.lifecycle.decide` hands the controller to carry out.

Plain values, so the decision stays pure and testable: the status to write, the actions in
order, the Events to post, the metrics to count and when to look again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class CreatePod:
    body: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])


@dataclass(frozen=True)
class ApplyConfigMap:
    """Create the ConfigMap, or replace its data if it exists (a new attempt's config)."""

    body: dict[str, Any]


@dataclass(frozen=True)
class EnsureService:
    body: dict[str, Any]


@dataclass(frozen=True)
class EnsureNetworkPolicy:
    """Create the job's NetworkPolicy (only the gang and the operator reach its pods)."""

    body: dict[str, Any]


@dataclass(frozen=True)
class UngatePod:
    name: str


@dataclass(frozen=True)
class DeletePod:
    """Delete a pod (uid precondition: never a newer pod that reuses the name).

    ``force`` (grace period 0) only for pods whose Node object is gone: no kubelet will ever
    confirm their termination, exactly the case the pod garbage collector force-deletes.
    """

    name: str
    uid: str
    force: bool = False


@dataclass(frozen=True)
class DeleteJob:
    """TTL after finishing: delete the FineTuneJob (garbage collection takes the rest)."""

    uid: str


@dataclass(frozen=True)
class EnsureWorkload:
    """Create the job's Kueue Workload unless it exists (queueing.py renders it)."""

    body: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])


@dataclass(frozen=True)
class DeleteWorkload:
    """Delete one of the job's Workloads (uid precondition): a suspended job holds no
    quota, a Workload of an older gang shape is replaced."""

    name: str
    uid: str


@dataclass(frozen=True)
class ReleaseWorkload:
    """After Kueue evicted the Workload and the gang is gone: clear its admission (and say
    whether it goes straight back to its queue), as Kueue's job integrations do."""

    name: str
    uid: str
    reason: str
    message: str
    requeue: bool


@dataclass(frozen=True)
class FinishWorkload:
    """The job ended: mark its Workload Finished, so Kueue frees the quota."""

    name: str
    uid: str
    succeeded: bool
    message: str


Action = (
    CreatePod
    | ApplyConfigMap
    | EnsureService
    | EnsureNetworkPolicy
    | UngatePod
    | DeletePod
    | DeleteJob
    | EnsureWorkload
    | DeleteWorkload
    | ReleaseWorkload
    | FinishWorkload
)


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class MetricEvent:
    """Something the metrics module counts (see kubetune.contract.metrics): a transition,
    restart or failure (``label``: phase or reason), or a duration in seconds (``value``)."""

    kind: Literal[
        "transition",
        "restart",
        "failure",
        "time_to_running",
        "scheduling_latency",
        "time_to_first_step",
    ]
    label: str = ""
    value: float = 1.0


@dataclass
class Plan:
    """What ``decide`` wants done, in order: status first, then actions."""

    status: dict[str, Any] | None = None
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    metrics: list[MetricEvent] = field(default_factory=list)
    requeue_after: float | None = None

    def requeue(self, seconds: float) -> None:
        seconds = max(0.5, float(seconds))
        if self.requeue_after is None or seconds < self.requeue_after:
            self.requeue_after = seconds

    def event(self, kind: EventType, reason: str, message: str) -> None:
        """Post an Event, its message clipped to 1024 characters (the limit of an Event's note)."""
        self.events.append(Event(kind, reason, message[:1024]))

    def pods_to_create(self) -> list[str]:
        return [a.name for a in self.actions if isinstance(a, CreatePod)]

    def pods_to_delete(self) -> list[str]:
        return [a.name for a in self.actions if isinstance(a, DeletePod)]
