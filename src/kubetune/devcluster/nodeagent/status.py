"""Pod status documents as a kubelet reports them (pure functions).

One container per pod is what the operator renders; several are reported alike. Phases follow
``restartPolicy: Never``: Pending (config missing) -> Running -> Succeeded / Failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

JSON = dict[str, Any]
#: the kubelet's limits on a termination message
MESSAGE_MAX_BYTES = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Exit:
    """How a container ended."""

    code: int
    reason: str
    message: str
    started_at: str
    finished_at: str


def exit_reason(code: int, oom_killed: bool = False) -> str:
    if oom_killed:
        return "OOMKilled"
    return "Completed" if code == 0 else "Error"


def termination_message(termlog: str, log_tail: str, code: int, policy: str = "File") -> str:
    """The termination-log file's text; with ``FallbackToLogsOnError`` and a failed, silent
    container, the last lines of its log instead."""
    message = termlog.encode()[:MESSAGE_MAX_BYTES].decode(errors="ignore")
    if message.strip() or code == 0 or policy != "FallbackToLogsOnError":
        return message
    lines = "\n".join(log_tail.splitlines()[-FALLBACK_LOG_LINES:])
    return lines.encode()[-FALLBACK_LOG_BYTES:].decode(errors="ignore")


def _condition(kind: str, ok: bool, reason: str | None = None) -> JSON:
    cond: JSON = {
        "type": kind,
        "status": "True" if ok else "False",
        "lastProbeTime": None,
        "lastTransitionTime": now(),
    }
    if reason:
        cond["reason"] = reason
    return cond


def _conditions(ready: bool, initialized: bool = True, reason: str | None = None) -> list[JSON]:
    return [
        _condition("PodReadyToStartContainers", initialized),
        _condition("Initialized", initialized),
        _condition("Ready", ready, None if ready else reason),
        _condition("ContainersReady", ready, None if ready else reason),
        _condition("PodScheduled", True),
    ]


def _container_base(container: JSON, container_id: str | None) -> JSON:
    base: JSON = {
        "name": container["name"],
        "image": container.get("image", ""),
        "imageID": "",
        "restartCount": 0,
    }
    if container_id:
        base["containerID"] = container_id
    return base


def _ips(host_ip: str, pod_ip: str | None, start_time: str) -> JSON:
    out: JSON = {"hostIP": host_ip, "hostIPs": [{"ip": host_ip}], "startTime": start_time}
    if pod_ip:
        out.update({"podIP": pod_ip, "podIPs": [{"ip": pod_ip}]})
    return out


def waiting_status(pod: JSON, host_ip: str, start_time: str, reason: str, message: str) -> JSON:
    """Pending: the container cannot be created yet (e.g. ``CreateContainerConfigError``)."""
    containers = pod["spec"]["containers"]
    return {
        "phase": "Pending",
        "conditions": _conditions(False, reason="ContainersNotReady"),
        **_ips(host_ip, None, start_time),
        "containerStatuses": [
            {
                **_container_base(c, None),
                "ready": False,
                "started": False,
                "state": {"waiting": {"reason": reason, "message": message}},
            }
            for c in containers
        ],
    }


def running_status(
    pod: JSON, host_ip: str, pod_ip: str, start_time: str, container_id: str, started_at: str
) -> JSON:
    """Running: every container started and (no probes) ready."""
    return {
        "phase": "Running",
        "conditions": _conditions(True),
        **_ips(host_ip, pod_ip, start_time),
        "containerStatuses": [
            {
                **_container_base(c, container_id),
                "ready": True,
                "started": True,
                "state": {"running": {"startedAt": started_at}},
            }
            for c in pod["spec"]["containers"]
        ],
    }


def terminated_status(
    pod: JSON, host_ip: str, pod_ip: str | None, start_time: str, container_id: str, end: Exit
) -> JSON:
    """Succeeded (exit 0) or Failed: ``restartPolicy: Never``, nothing restarts."""
    terminated: JSON = {
        "exitCode": end.code,
        "reason": end.reason,
        "startedAt": end.started_at,
        "finishedAt": end.finished_at,
        "containerID": container_id,
    }
    if end.message:
        terminated["message"] = end.message
    return {
        "phase": "Succeeded" if end.code == 0 else "Failed",
        "conditions": _conditions(False, reason="PodCompleted"),
        **_ips(host_ip, pod_ip, start_time),
        "containerStatuses": [
            {
                **_container_base(c, container_id),
                "ready": False,
                "started": False,
                "state": {"terminated": terminated},
            }
            for c in pod["spec"]["containers"]
        ],
    }


def is_terminal(pod: JSON) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
