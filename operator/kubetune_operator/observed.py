"""Slim, immutable views of the objects the operator observes.

The watch streams deliver whole objects; the decision logic needs a few fields of each.
Views keep the in-memory caches small (200 jobs x N pods) and make the pure decision
functions easy to feed in unit tests.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from kubetune_operator import naming
from kubetune_operator.quantities import pod_requests

if TYPE_CHECKING:
    from kubetune_operator.admission import Capacity
    from kubetune_operator.profiles import ProfileResolution
    from kubetune_operator.queueing import FlavorView, WorkloadView
    from kubetune_operator.tenancy import TenantTier


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp from the API (``2024-05-01T12:00:00Z``), or None."""
    if not value:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with seconds precision, as Kubernetes writes ``metav1.Time``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class ContainerExit:
    """How the trainer container terminated."""

    exit_code: int
    reason: str | None = None
    message: str | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True)
class PodCondition:
    """A status condition (of a pod, or of a Kueue Workload)."""

    status: str
    reason: str | None = None
    message: str | None = None
    last_transition_time: datetime | None = None

    @classmethod
    def of(cls, raw: Mapping[str, Any] | None) -> PodCondition | None:
        """The condition as the API returns it; None when absent."""
        if not raw:
            return None
        return cls(
            status=str(raw.get("status")),
            reason=raw.get("reason"),
            message=raw.get("message"),
            last_transition_time=parse_time(raw.get("lastTransitionTime")),
        )


@dataclass(frozen=True)
class PodView:
    """What the operator needs to know about one of its pods."""

    name: str
    uid: str
    job: str
    role: str
    owner_uid: str | None
    attempt: int | None = None
    rank: int | None = None
    validation_run: int | None = None
    phase: str = "Pending"
    reason: str | None = None
    message: str | None = None
    node_name: str | None = None
    pod_ip: str | None = None
    deleting: bool = False
    gates: tuple[str, ...] = ()
    created: datetime | None = None
    scheduled: PodCondition | None = None
    disruption: PodCondition | None = None
    exit: ContainerExit | None = None
    waiting_reason: str | None = None
    waiting_message: str | None = None
    resource_version: str = ""
    #: Hashes of the spec sections the pod was created from (see render.pods.spec_sections).
    spec_sections: tuple[tuple[str, str], ...] = ()
    #: What the pod asks of its node (for the capacity kubetune's own pods hold).
    requests: tuple[tuple[str, Decimal], ...] = ()
    #: The job's restart request (annotation) the pod was created under.
    restart_token: str | None = None

    @property
    def gated(self) -> bool:
        """Still held by our gang gate."""
        return naming.GANG_GATE in self.gates

    @property
    def foreign_gates(self) -> tuple[str, ...]:
        """Gates someone else holds (e.g. Kueue's admission gate)."""
        return tuple(g for g in self.gates if g != naming.GANG_GATE)

    @property
    def bound(self) -> bool:
        return bool(self.node_name)

    @property
    def terminated(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def live(self) -> bool:
        """Holds (or may soon hold) resources: not terminated and not being deleted."""
        return not self.terminated and not self.deleting

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PodView:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        labels = meta.get("labels") or {}
        owner_uid = None
        for ref in meta.get("ownerReferences") or []:
            if ref.get("controller") and ref.get("kind") == naming.KIND:
                owner_uid = ref.get("uid")
        conditions = {c.get("type"): c for c in status.get("conditions") or []}

        def cond(kind: str) -> PodCondition | None:
            return PodCondition.of(conditions.get(kind))

        exit_info: ContainerExit | None = None
        waiting_reason = waiting_message = None
        statuses = status.get("containerStatuses") or []
        wanted = (naming.TRAINER_CONTAINER, naming.VALIDATION_CONTAINER)
        chosen = next((s for s in statuses if s.get("name") in wanted), None)
        if chosen is None and statuses:
            chosen = statuses[0]
        if chosen is not None:
            state = chosen.get("state") or {}
            term = state.get("terminated")
            if term is not None:
                exit_info = ContainerExit(
                    exit_code=int(term.get("exitCode", 0)),
                    reason=term.get("reason"),
                    message=(term.get("message") or "").strip() or None,
                    finished_at=parse_time(term.get("finishedAt")),
                )
            waiting = state.get("waiting")
            if waiting is not None:
                waiting_reason = waiting.get("reason")
                waiting_message = waiting.get("message")
        return cls(
            name=str(meta.get("name")),
            uid=str(meta.get("uid", "")),
            job=naming.job_of(meta),
            role=str(labels.get(naming.LABEL_ROLE, naming.ROLE_WORKER)),
            owner_uid=owner_uid,
            attempt=_int_or_none(labels.get(naming.LABEL_ATTEMPT)),
            rank=_int_or_none(labels.get(naming.LABEL_RANK)),
            validation_run=_int_or_none(labels.get(naming.LABEL_VALIDATION_RUN)),
            phase=str(status.get("phase") or "Pending"),
            reason=status.get("reason"),
            message=status.get("message"),
            node_name=spec.get("nodeName") or None,
            pod_ip=status.get("podIP") or None,
            deleting=bool(meta.get("deletionTimestamp")),
            gates=tuple(g.get("name", "") for g in spec.get("schedulingGates") or []),
            created=parse_time(meta.get("creationTimestamp")),
            scheduled=cond("PodScheduled"),
            disruption=cond("DisruptionTarget"),
            exit=exit_info,
            waiting_reason=waiting_reason,
            waiting_message=waiting_message,
            resource_version=str(meta.get("resourceVersion", "")),
            spec_sections=_sections(meta),
            requests=tuple(sorted(pod_requests(body).items())),
            restart_token=(meta.get("annotations") or {}).get(naming.ANNOTATION_RESTART),
        )


def _sections(meta: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    raw = (meta.get("annotations") or {}).get(naming.ANNOTATION_SPEC_SECTIONS)
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return ()
    if not isinstance(data, dict):
        return ()
    return tuple(sorted((str(k), str(v)) for k, v in data.items()))


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = ""


@dataclass(frozen=True)
class NodeView:
    """A node's readiness, for deciding whether pods on it are lost, and what it could ever
    hold (allocatable resources, labels, taints), for telling a gang that can never be placed
    from one that waits for room."""

    name: str
    ready: bool
    since: datetime | None = None
    unschedulable: bool = False
    allocatable: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    taints: tuple[Taint, ...] = ()

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> NodeView:
        meta = body.get("metadata") or {}
        ready = False
        since = None
        for c in (body.get("status") or {}).get("conditions") or []:
            if c.get("type") == "Ready":
                ready = c.get("status") == "True"
                since = parse_time(c.get("lastTransitionTime"))
        spec = body.get("spec") or {}
        allocatable = (body.get("status") or {}).get("allocatable") or {}
        return cls(
            name=str(meta.get("name")),
            ready=ready,
            since=since,
            unschedulable=bool(spec.get("unschedulable")),
            allocatable=tuple(sorted((str(k), str(v)) for k, v in allocatable.items())),
            labels=tuple(sorted((str(k), str(v)) for k, v in (meta.get("labels") or {}).items())),
            taints=tuple(
                Taint(str(t.get("key", "")), str(t.get("value") or ""), str(t.get("effect") or ""))
                for t in spec.get("taints") or []
            ),
        )


def controller_owner(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ownerReference marked ``controller: true`` of an object's metadata, or None."""
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


@dataclass(frozen=True)
class ChildConflict:
    """An object the job needs (its ConfigMap, Service or a pod) exists under the name the
    job would give it but is not the job's own (its controller owner is someone else).

    ``stale``: it will go on its own -- it belongs to an earlier FineTuneJob of the same
    name (deleted, so garbage collection removes its children) or is being deleted.
    """

    kind: str
    name: str
    owner: str | None = None
    stale: bool = False

    def describe(self, namespace: str) -> str:
        owner = f"owned by {self.owner}" if self.owner else "not owned by any controller"
        return f"{self.kind} {namespace}/{self.name} already exists and is {owner}"


#: API server answers to a pod create that the same pod would get again: a pod the schema
#: refuses (400/422), the namespace's Pod Security level, an admission webhook's denial.
#: Anything else (a full ResourceQuota, a ServiceAccount not created yet) may pass later.
_PERMANENT_MARKERS = ("violates PodSecurity", "admission webhook")


@dataclass(frozen=True)
class CreateRefusal:
    """The API server refused to create one of the job's pods (as the executor last met it)."""

    pod: str
    code: int
    reason: str
    message: str
    generation: int | None = None

    @property
    def permanent(self) -> bool:
        """Retrying the same pod cannot help (until the spec or the namespace changes)."""
        if self.code in (400, 422):
            return True
        return self.code == 403 and any(m in self.message for m in _PERMANENT_MARKERS)


@dataclass(frozen=True)
class ProgressSample:
    """The latest progress document fetched from rank 0, with when it was fetched."""

    document: Mapping[str, Any]
    fetched_at: datetime
    attempt: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class Observed:
    """Everything :func:`kubetune_operator.lifecycle.decide` looks at for one job."""

    raw: Mapping[str, Any]
    pods: tuple[PodView, ...] = ()
    nodes: Mapping[str, NodeView] | None = None
    progress: ProgressSample | None = None
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    ungated_since: datetime | None = None
    #: Objects found under the job's child names that the job does not own (see
    #: :class:`ChildConflict`), as the executor last met them.
    conflicts: tuple[ChildConflict, ...] = ()
    #: The API server's refusal of the job's last pod create, until a create succeeds.
    refusal: CreateRefusal | None = None
    #: What other kubetune jobs hold, when the job's gang may be released (else None).
    capacity: Capacity | None = None
    #: The tenant policy tiers governing the job's namespace (see tenancy.py).
    tenant_tiers: tuple[TenantTier, ...] = ()
    #: Whether Kueue's Workload API is served and watched (queueing.py).
    kueue: bool = False
    #: The job's Kueue Workloads (normally one) and the ResourceFlavors Kueue knows.
    workloads: tuple[WorkloadView, ...] = ()
    flavors: Mapping[str, FlavorView] = field(default_factory=dict)
    #: How the job's profiles resolved (``raw`` already holds the merged spec); None: no
    #: profiles were read for it (see profiles.py).
    profiles: ProfileResolution | None = None

    @property
    def name(self) -> str:
        return str((self.raw.get("metadata") or {}).get("name"))

    @property
    def namespace(self) -> str:
        return str((self.raw.get("metadata") or {}).get("namespace", "default"))

    @property
    def uid(self) -> str:
        return str((self.raw.get("metadata") or {}).get("uid", ""))

    @property
    def attempt(self) -> int:
        """The current attempt: the status's count, or newer where the job's own worker pods
        say so (a plan that creates pods writes its status alongside them, not before)."""
        recorded = int((self.raw.get("status") or {}).get("attempts") or 0)
        labelled = [
            p.attempt
            for p in self.pods
            if p.owner_uid == self.uid and p.role == naming.ROLE_WORKER and p.attempt is not None
        ]
        return max([recorded, *labelled, 1])

    @property
    def generation(self) -> int | None:
        gen = (self.raw.get("metadata") or {}).get("generation")
        return int(gen) if gen is not None else None
