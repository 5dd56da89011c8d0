"""A pod that ended on its own keeps its directory until its object is deleted, then loses it:
the leak behind uninstalls that left operator pods' directories on the agent."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from kubetune.devcluster.nodeagent.agent import Agent
from kubetune.devcluster.nodeagent.pod import pod_stem


class RecordingApi:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    def delete(self, path: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
        self.deleted.append(path)
        return {}


def failed_pod(deleting: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "kubetune-system", "name": "op-1", "uid": "0123abcd-ff"}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T00:00:00Z"
        meta["deletionGracePeriodSeconds"] = 30
    return {"metadata": meta, "spec": {"nodeName": "n0"}, "status": {"phase": "Failed"}}


def agent_with(tmp_path: Path) -> tuple[Agent, RecordingApi, Path]:
    agent = Agent.__new__(Agent)
    Agent.__init__(agent, SimpleNamespace())  # type: ignore[arg-type]
    api = RecordingApi()
    pods_dir = tmp_path / "pods"
    agent.ctx = SimpleNamespace(  # type: ignore[assignment]
        config=SimpleNamespace(pods_dir=pods_dir),
        api=api,
        pod_path=lambda pod, suffix="": f"/pods/{pod['metadata']['name']}{suffix}",
    )
    directory = pods_dir / pod_stem(failed_pod(False))
    (directory / "rootfs").mkdir(parents=True)
    return agent, api, directory


def test_an_ended_pod_keeps_its_directory_until_deleted(tmp_path: Path) -> None:
    agent, api, directory = agent_with(tmp_path)
    agent.handle("MODIFIED", failed_pod(deleting=False))
    assert directory.is_dir() and api.deleted == []

    agent.handle("MODIFIED", failed_pod(deleting=True))
    assert not directory.exists()
    assert api.deleted == ["/pods/op-1"]  # the kubelet's final delete, grace 0


def test_a_deleted_event_alone_removes_the_directory(tmp_path: Path) -> None:
    agent, api, directory = agent_with(tmp_path)
    agent.handle("DELETED", failed_pod(deleting=True))
    assert not directory.exists()
    assert api.deleted == []  # already gone: nothing to delete
