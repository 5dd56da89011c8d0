"""Kueue integration: one ``Workload`` per FineTuneJob, owned by it.

Why a Workload the operator creates rather than Kueue's plain-pod groups: with pod groups
the gang's pods must exist (gated) before Kueue can see them, so a job waiting in a queue
already has N pods in the namespace and a queue of 200 jobs means hundreds of pending pods.
With a Workload the job stays queued with no pod at all until Kueue reserves quota for the
whole gang; the operator then creates the pods with the assigned flavor's node labels and
tolerations. This is how Kueue integrates a custom job kind (its ``jobframework``): the job
controller owns the Workload, starts the job on admission, stops it on eviction and clears
the admission once it is stopped (so Kueue requeues it), and finishes the Workload when the
job ends. The pure functions here render the Workload and read Kueue's verdicts; the
lifecycle decides and the controller carries it out.

The Workload's pod sets are immutable while quota is reserved, so its name carries a hash of
the gang's shape (count, per-pod requests, node selector, tolerations, priority, queue): a
job whose shape changed (only possible while suspended) gets a new Workload, the old one is
deleted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from kubetune.api import FineTuneJob
from kubetune_operator import naming
from kubetune_operator.observed import PodCondition, controller_owner, parse_time
from kubetune_operator.render import common

KUEUE_GROUP: Final = "kueue.x-k8s.io"
KUEUE_VERSION: Final = "v1beta2"
KUEUE_API_VERSION: Final = f"{KUEUE_GROUP}/{KUEUE_VERSION}"
WORKLOADS: Final = "workloads"
RESOURCE_FLAVORS: Final = "resourceflavors"
#: The one pod set of a gang (every pod is alike: torchrun ranks differ only by env).
POD_SET: Final = "workers"
ANNOTATION_SHAPE: Final = "kubetune.io/workload-shape"

# Workload condition types and reasons (kueue.x-k8s.io/v1beta2 constants).
QUOTA_RESERVED: Final = "QuotaReserved"
ADMITTED: Final = "Admitted"
EVICTED: Final = "Evicted"
REQUEUED: Final = "Requeued"
FINISHED: Final = "Finished"
#: Evictions after which Kueue expects the workload back in its queue at once.
REQUEUE_REASONS: Final = frozenset({"Preempted", "NodeFailures"})


def workload_name(job: str, shape: str) -> str:
    """``<job short name>-<shape hash>``: stable per shape, a valid object name."""
    return f"{naming.short_name(job)}-{shape[:10]}"


#: Requested by every pod (the operator's bound on scratch space) but not what quotas are
#: about: a ClusterQueue that does not cover it would refuse every FineTuneJob.
UNQUEUED_RESOURCES: Final = frozenset({"ephemeral-storage"})


def _queued(container: Mapping[str, Any]) -> dict[str, Any]:
    resources = container.get("resources") or {}
    return {
        kind: {k: v for k, v in (resources.get(kind) or {}).items() if k not in UNQUEUED_RESOURCES}
        for kind in ("requests", "limits")
        if resources.get(kind)
    }


def _template(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a worker pod Kueue accounts and places by: containers' requests, node
    selector, affinity, tolerations, priority class. Volumes, env and the rest stay out: the
    Workload is a reservation, not the pod."""
    spec = pod.get("spec") or {}
    containers = [
        {"name": c["name"], "image": c.get("image", ""), "resources": _queued(c)}
        for c in spec.get("containers") or []
    ]
    out: dict[str, Any] = {"containers": containers}
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        if spec.get(key):
            out[key] = spec[key]
    return {"spec": out}


def shape_of(job: FineTuneJob, pod: Mapping[str, Any]) -> str:
    """Hash of what the Workload's spec is made of (see the module docstring)."""
    doc = {
        "count": job.spec.resources.nodes,
        "template": _template(pod),
        "queue": job.spec.run_policy.queue_name,
    }
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def render_workload(job: FineTuneJob, pod: Mapping[str, Any]) -> dict[str, Any]:
    """The Workload for ``job`` whose pods look like ``pod`` (rank 0 of the gang).

    ``spec.priority`` is filled in by the controller from the PriorityClass (Kueue reads the
    number, not the name, for ordering and preemption)."""
    shape = shape_of(job, pod)
    name = workload_name(str(job.metadata.name), shape)
    template = _template(pod)
    spec: dict[str, Any] = {
        "queueName": job.spec.run_policy.queue_name,
        "podSets": [{"name": POD_SET, "count": job.spec.resources.nodes, "template": template}],
    }
    priority_class = job.spec.resources.priority_class_name
    if priority_class:
        spec["priorityClassRef"] = {
            "group": "scheduling.k8s.io",
            "kind": "PriorityClass",
            "name": priority_class,
        }
    body = {
        "apiVersion": KUEUE_API_VERSION,
        "kind": "Workload",
        "metadata": common.object_meta(
            job, name, "workload", annotations={ANNOTATION_SHAPE: shape}
        ),
        "spec": spec,
    }
    return common.adopt(body, job)


@dataclass(frozen=True)
class Placement:
    """What Kueue's admission adds to the gang's pods: the assigned flavors' node labels and
    tolerations, plus admission checks' pod-set updates."""

    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[str, ...] = ()  # JSON, so the view stays hashable
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()

    def apply(self, pod: dict[str, Any]) -> dict[str, Any]:
        """``pod`` with the placement merged in (the pod's own values win on a clash: they
        are what the Workload was admitted for)."""
        spec = pod.setdefault("spec", {})
        if self.node_selector:
            spec["nodeSelector"] = {**dict(self.node_selector), **(spec.get("nodeSelector") or {})}
        if self.tolerations:
            existing = spec.get("tolerations") or []
            extra = [json.loads(t) for t in self.tolerations]
            spec["tolerations"] = [*existing, *(t for t in extra if t not in existing)]
        meta = pod.setdefault("metadata", {})
        if self.labels:
            meta["labels"] = {**dict(self.labels), **(meta.get("labels") or {})}
        if self.annotations:
            meta["annotations"] = {**dict(self.annotations), **(meta.get("annotations") or {})}
        return pod


@dataclass(frozen=True)
class FlavorView:
    """A ResourceFlavor: where pods admitted on it must go."""

    name: str
    node_labels: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[str, ...] = ()  # JSON

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> FlavorView:
        spec = body.get("spec") or {}
        return cls(
            name=str((body.get("metadata") or {}).get("name")),
            node_labels=tuple(sorted((spec.get("nodeLabels") or {}).items())),
            tolerations=tuple(json.dumps(t, sort_keys=True) for t in spec.get("tolerations") or []),
        )


@dataclass(frozen=True)
class WorkloadView:
    """What the lifecycle reads from a job's Workload."""

    name: str
    uid: str
    owner_uid: str | None
    shape: str | None
    deleting: bool = False
    cluster_queue: str | None = None
    #: flavor names per resource of the gang's pod set, from ``status.admission``
    flavors: tuple[tuple[str, str], ...] = ()
    quota_reserved: PodCondition | None = None
    admitted: PodCondition | None = None
    evicted: PodCondition | None = None
    finished: PodCondition | None = None
    #: admission checks' podSetUpdates for the gang's pod set
    updates: Placement = field(default_factory=Placement)
    created: datetime | None = None
    resource_version: str = ""

    @property
    def is_admitted(self) -> bool:
        """Quota reserved and every admission check passed: the gang may start."""
        return (
            self.admitted is not None
            and self.admitted.status == "True"
            and self.cluster_queue is not None
            and not self.is_evicted
        )

    @property
    def is_evicted(self) -> bool:
        return self.evicted is not None and self.evicted.status == "True"

    @property
    def has_quota(self) -> bool:
        return self.cluster_queue is not None

    @property
    def is_finished(self) -> bool:
        return self.finished is not None and self.finished.status == "True"

    def pending_reason(self) -> str:
        """Why Kueue has not admitted it yet, in Kueue's words (or a plain default)."""
        cond = self.quota_reserved
        if cond is not None and cond.status == "False" and cond.message:
            return cond.message
        if self.has_quota:
            return "quota reserved, waiting for admission checks"
        return "waiting for Kueue to consider it"

    def placement(self, flavors: Mapping[str, FlavorView]) -> Placement | None:
        """The admitted flavors' node labels and tolerations plus the checks' updates; None
        when an assigned flavor is not known (yet) -- the pods must not start without it."""
        selector: dict[str, str] = dict(self.updates.node_selector)
        tolerations: list[str] = list(self.updates.tolerations)
        for flavor_name in sorted({f for _, f in self.flavors}):
            flavor = flavors.get(flavor_name)
            if flavor is None:
                return None
            selector.update(dict(flavor.node_labels))
            tolerations.extend(t for t in flavor.tolerations if t not in tolerations)
        return Placement(
            node_selector=tuple(sorted(selector.items())),
            tolerations=tuple(tolerations),
            labels=self.updates.labels,
            annotations=self.updates.annotations,
        )

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> WorkloadView:
        meta = body.get("metadata") or {}
        status = body.get("status") or {}
        conditions = {str(c.get("type")): c for c in status.get("conditions") or []}
        admission = status.get("admission") or {}
        flavors: dict[str, str] = {}
        for assignment in admission.get("podSetAssignments") or []:
            if assignment.get("name") == POD_SET:
                flavors = {str(k): str(v) for k, v in (assignment.get("flavors") or {}).items()}
        selector: dict[str, str] = {}
        tolerations: list[str] = []
        labels: dict[str, str] = {}
        annotations: dict[str, str] = {}
        for check in status.get("admissionChecks") or []:
            for update in check.get("podSetUpdates") or []:
                if update.get("name") != POD_SET:
                    continue
                selector.update(update.get("nodeSelector") or {})
                tolerations.extend(
                    json.dumps(t, sort_keys=True) for t in update.get("tolerations") or []
                )
                labels.update(update.get("labels") or {})
                annotations.update(update.get("annotations") or {})
        owner = controller_owner(meta)
        return cls(
            name=str(meta.get("name")),
            uid=str(meta.get("uid", "")),
            owner_uid=str(owner.get("uid")) if owner and owner.get("kind") == naming.KIND else None,
            shape=(meta.get("annotations") or {}).get(ANNOTATION_SHAPE),
            deleting=bool(meta.get("deletionTimestamp")),
            cluster_queue=admission.get("clusterQueue") or None,
            flavors=tuple(sorted(flavors.items())),
            quota_reserved=PodCondition.of(conditions.get(QUOTA_RESERVED)),
            admitted=PodCondition.of(conditions.get(ADMITTED)),
            evicted=PodCondition.of(conditions.get(EVICTED)),
            finished=PodCondition.of(conditions.get(FINISHED)),
            updates=Placement(
                node_selector=tuple(sorted(selector.items())),
                tolerations=tuple(tolerations),
                labels=tuple(sorted(labels.items())),
                annotations=tuple(sorted(annotations.items())),
            ),
            created=parse_time(meta.get("creationTimestamp")),
            resource_version=str(meta.get("resourceVersion", "")),
        )


def condition(
    kind: str, status: str, reason: str, message: str, now: str, generation: int | None
) -> dict[str, Any]:
    """A metav1.Condition for a Workload's status."""
    out: dict[str, Any] = {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": now,
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out
