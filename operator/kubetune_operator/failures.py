"""Why did a pod of the gang stop, and is it worth another attempt?

Infrastructure failures (lost node, preemption, eviction, a retryable trainer exit code)
restart the whole gang from its last checkpoint; a permanent trainer exit code (bad data,
bad config, missing model, NaN loss) fails the job at once with the trainer's message --
retrying would burn GPUs on the same error. The exit-code policy itself lives in the
contract (:func:`kubetune.contract.exit_codes.classify_exit_code`), shared with the trainer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from kubetune.contract.exit_codes import classify_exit_code, exit_reason
from kubetune_operator.observed import NodeView, PodView
from kubetune_operator.reasons import INFRASTRUCTURE, Reason

MAX_MESSAGE = 1024

# DisruptionTarget condition reasons (k8s.io/api/core/v1 PodReason*).
_DISRUPTION_REASONS = {
    "PreemptionByScheduler": Reason.PREEMPTED,
    "PreemptionByKubeScheduler": Reason.PREEMPTED,
    "DeletionByTaintManager": Reason.NODE_LOST,
    "DeletionByPodGC": Reason.NODE_LOST,
    "EvictionByEvictionAPI": Reason.EVICTED,
    "TerminationByKubelet": Reason.EVICTED,
}

# Pod status reasons set by the kubelet / node controllers.
_POD_REASONS = {
    "Evicted": Reason.EVICTED,
    "NodeLost": Reason.NODE_LOST,
    "Shutdown": Reason.NODE_SHUTDOWN,
    "Terminated": Reason.NODE_SHUTDOWN,
    "NodeAffinity": Reason.ADMISSION_FAILED,
    "UnexpectedAdmissionError": Reason.ADMISSION_FAILED,
}


# Container waiting reasons (kubelet) that mean "this pod will not start as things are":
# a missing Secret/ConfigMap key, an image that cannot be pulled. Reported at once with the
# kubelet's message (which names the object); startup_timeout_seconds bounds them.
_STARTUP_REASONS = {
    "CreateContainerConfigError": Reason.CREATE_CONTAINER_CONFIG_ERROR,
    "CreateContainerError": Reason.CREATE_CONTAINER_ERROR,
    "ImagePullBackOff": Reason.IMAGE_PULL_BACK_OFF,
    "ErrImagePull": Reason.ERR_IMAGE_PULL,
    "InvalidImageName": Reason.INVALID_IMAGE_NAME,
    "ErrImageNeverPull": Reason.ERR_IMAGE_NEVER_PULL,
}


@dataclass(frozen=True)
class Failure:
    """A classified pod failure."""

    retryable: bool
    reason: str
    message: str
    pod: str | None = None
    rank: int | None = None
    exit_code: int | None = None
    at: datetime | None = None

    @property
    def infrastructure(self) -> bool:
        return self.reason in INFRASTRUCTURE


def _clip(text: str, limit: int = MAX_MESSAGE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _who(pod: PodView) -> str:
    return f"pod {pod.name}" + (f" (rank {pod.rank})" if pod.rank is not None else "")


def classify_exit(pod: PodView) -> Failure | None:
    """Classify a terminated trainer container by its exit code and reason."""
    ex = pod.exit
    if ex is None or ex.exit_code == 0:
        return None
    kind = classify_exit_code(ex.exit_code)
    reason = exit_reason(ex.exit_code)
    if ex.reason == "OOMKilled":  # the kubelet's container reason
        # Host-memory OOM: often a spike (checkpoint save, eval); backoffLimit bounds the cost.
        reason = Reason.OOM_KILLED
    detail = ex.message or ex.reason or ""
    message = f"{_who(pod)} exited with code {ex.exit_code} ({reason})"
    if reason == Reason.OOM_KILLED:
        message += (
            ": out of memory; resources cannot change while the job runs: to raise "
            "spec.resources.memory, first set spec.runPolicy.suspend to true, then raise it "
            "in a second update, then set suspend back to false (the job resumes from its "
            "last checkpoint)"
        )
    elif detail:
        message += f": {detail}"
    return Failure(
        retryable=kind != "permanent",
        reason=reason,
        message=_clip(message),
        pod=pod.name,
        rank=pod.rank,
        exit_code=ex.exit_code,
        at=ex.finished_at,
    )


def startup_problem(pod: PodView) -> Failure | None:
    """Why ``pod``'s container cannot start (a missing Secret, an image pull error), with the
    kubelet's own reason and message; None while it starts normally or has started."""
    if pod.terminated or pod.deleting or pod.waiting_reason not in _STARTUP_REASONS:
        return None
    reason = _STARTUP_REASONS[pod.waiting_reason]
    text = f"{_who(pod)} cannot start: {pod.waiting_reason}"
    if pod.waiting_message:
        text += f": {pod.waiting_message}"
    return Failure(True, reason, _clip(text), pod.name, pod.rank)


def _disruption(pod: PodView) -> Failure | None:
    cond = pod.disruption
    if cond is None or cond.status != "True":
        return None
    reason = _DISRUPTION_REASONS.get(cond.reason or "", Reason.DISRUPTED)
    text = f"{_who(pod)} was disrupted ({cond.reason or 'unknown'})"
    if cond.message:
        text += f": {cond.message}"
    return Failure(True, reason, _clip(text), pod.name, pod.rank, at=cond.last_transition_time)


def node_gone(pod: PodView, nodes: Mapping[str, NodeView] | None) -> bool:
    """The pod is bound to a Node object that no longer exists."""
    return bool(nodes is not None and pod.node_name and pod.node_name not in nodes)


def node_loss(
    pod: PodView, nodes: Mapping[str, NodeView] | None, now: datetime, grace: float
) -> Failure | None:
    """The pod's node is gone, or NotReady for ``grace`` seconds: the pod is lost, whatever
    its own phase still says (nobody is left to update it)."""
    if nodes is None or not pod.node_name or pod.terminated:
        return None
    node = nodes.get(pod.node_name)
    if node is None:
        return Failure(
            True,
            Reason.NODE_LOST,
            f"{_who(pod)}: node {pod.node_name} no longer exists",
            pod.name,
            pod.rank,
            at=now,
        )
    if not node.ready:
        since = node.since or now
        if now - since >= timedelta(seconds=grace):
            return Failure(
                True,
                Reason.NODE_LOST,
                f"{_who(pod)}: node {pod.node_name} has been NotReady since "
                f"{since.strftime('%Y-%m-%dT%H:%M:%SZ')}",
                pod.name,
                pod.rank,
                at=since,
            )
    return None


def node_loss_deadline(
    pod: PodView, nodes: Mapping[str, NodeView] | None, grace: float
) -> datetime | None:
    """When a pod on a NotReady node will count as lost (for requeueing), else None."""
    if nodes is None or not pod.node_name or pod.terminated:
        return None
    node = nodes.get(pod.node_name)
    if node is None or node.ready or node.since is None:
        return None
    return node.since + timedelta(seconds=grace)


def classify_pod(
    pod: PodView,
    nodes: Mapping[str, NodeView] | None,
    now: datetime,
    node_lost_grace: float,
) -> Failure | None:
    """The failure of ``pod``, or None while it is healthy (pending, running or succeeded).

    Order matters: the explicit signals (DisruptionTarget, pod reason) say more than the
    exit code a killed process leaves behind (137 after an eviction is not an OOM).
    """
    if pod.phase == "Succeeded":
        return None
    disrupted = _disruption(pod)
    if pod.phase == "Failed":
        if disrupted:
            return disrupted
        if pod.reason in _POD_REASONS:
            text = f"{_who(pod)} failed ({pod.reason})"
            if pod.message:
                text += f": {pod.message}"
            return Failure(True, _POD_REASONS[pod.reason], _clip(text), pod.name, pod.rank)
        by_exit = classify_exit(pod)
        if by_exit is not None:
            return by_exit
        text = f"{_who(pod)} failed" + (f": {pod.message}" if pod.message else "")
        return Failure(True, Reason.POD_FAILED, _clip(text), pod.name, pod.rank)
    if pod.phase == "Unknown":
        return Failure(
            True, Reason.NODE_LOST, f"{_who(pod)}: its node stopped reporting", pod.name, pod.rank
        )
    if pod.deleting:
        if disrupted:
            return disrupted
        return Failure(
            True, Reason.POD_DELETED, f"{_who(pod)} was deleted while running", pod.name, pod.rank
        )
    return node_loss(pod, nodes, now, node_lost_grace)


def root_cause(failures: Iterable[Failure]) -> Failure | None:
    """The failure that explains the gang's: a permanent one if any (it decides the job's
    fate), else an infrastructure one, else the earliest exit."""
    items = list(failures)
    if not items:
        return None
    permanent = [f for f in items if not f.retryable]
    if permanent:
        return min(permanent, key=lambda f: f.rank if f.rank is not None else 1 << 30)
    infra = [f for f in items if f.infrastructure]
    pool = infra or items
    epoch = datetime.max.replace(tzinfo=None)

    def when(f: Failure) -> tuple[datetime, int]:
        at = f.at.replace(tzinfo=None) if f.at else epoch
        return at, f.rank if f.rank is not None else 1 << 30

    return min(pool, key=when)
