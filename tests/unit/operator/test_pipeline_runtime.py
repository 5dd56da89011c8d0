"""The FineTunePipeline worker against a fake API server: what it writes, where, fenced."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from kubetune_operator.kube import ApiError, KubeClient
from kubetune_operator.pipeline.runtime import PipelineController, owning_pipeline

REPO = Path(__file__).resolve().parents[3]
PPATH = "/apis/kubetune.io/v1alpha1/namespaces/default/finetunepipelines/sft-rm-grpo"
JOBS = "/apis/kubetune.io/v1alpha1/namespaces/default/finetunejobs"


class FakeKube:
    path = staticmethod(KubeClient.path)

    def __init__(self, pipeline: dict[str, Any]) -> None:
        self.pipeline = pipeline
        self.calls: list[tuple[str, str, Any]] = []
        self.existing: set[str] = set()

    async def get(self, path: str) -> dict[str, Any]:
        assert path == PPATH
        return copy.deepcopy(self.pipeline)

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("POST", path, body))
        if body["metadata"]["name"] in self.existing:
            raise ApiError(409, "AlreadyExists", "exists")
        return body

    async def patch(self, path: str, body: Any) -> dict[str, Any]:
        self.calls.append(("PATCH", path, body))
        return {}

    async def delete(self, path: str, *, uid: str | None = None) -> dict[str, Any]:
        self.calls.append(("DELETE", path, uid))
        return {}


class FakeEvents:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str]] = []

    async def post(self, involved: Any, type: str, reason: str, message: str) -> None:
        self.posted.append((type, reason))


def pipeline_body() -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "examples/pipelines/sft-rm-grpo.yaml").read_text())
    doc["metadata"].update(uid="u1", generation=3, resourceVersion="42")
    return dict(doc)


def test_reconcile_creates_the_first_job_and_patches_status_fenced() -> None:
    kube, events = FakeKube(pipeline_body()), FakeEvents()
    controller = PipelineController(
        kube,  # type: ignore[arg-type]
        events,  # type: ignore[arg-type]
        lambda key: None,
        clock=lambda: datetime(2026, 1, 1, tzinfo=UTC),
    )
    kube.existing.add("sft-rm-grpo-sft")  # a cache that lags our own create: harmless
    asyncio.run(controller.reconcile(("default", "sft-rm-grpo")))
    (post, patch) = kube.calls
    assert post[0:2] == ("POST", JOBS) and post[2]["metadata"]["name"] == "sft-rm-grpo-sft"
    assert patch[0:2] == ("PATCH", PPATH + "/status")
    assert patch[2]["metadata"] == {"resourceVersion": "42"}
    assert patch[2]["status"]["phase"] == "Running"
    assert patch[2]["status"]["observedGeneration"] == 3
    assert [s["phase"] for s in patch[2]["status"]["stages"]] == ["Pending", "Waiting", "Waiting"]
    assert events.posted == [("Normal", "StageCreated")]


def test_retry_deletes_the_failed_job_by_uid_and_job_events_wake_the_owner() -> None:
    body = pipeline_body()
    body["spec"]["retryGeneration"] = 1
    kube, events = FakeKube(body), FakeEvents()
    failed = {
        "metadata": {
            "name": "sft-rm-grpo-sft",
            "uid": "job-uid",
            "ownerReferences": [
                {
                    "apiVersion": "kubetune.io/v1alpha1",
                    "kind": "FineTunePipeline",
                    "name": "sft-rm-grpo",
                    "uid": "u1",
                }
            ],
        },
        "spec": {"output": {"uri": "pvc://checkpoints/sft-rm-grpo/sft"}},
        "status": {"phase": "Failed"},
    }
    controller = PipelineController(
        kube,  # type: ignore[arg-type]
        events,  # type: ignore[arg-type]
        lambda key: failed if key == ("default", "sft-rm-grpo-sft") else None,
    )
    asyncio.run(controller.reconcile(("default", "sft-rm-grpo")))
    assert kube.calls[0] == ("DELETE", JOBS + "/sft-rm-grpo-sft", "job-uid")
    assert not any(c[0] == "POST" for c in kube.calls)
    assert owning_pipeline(failed) == "sft-rm-grpo"
    controller.job_event("default", failed)
    controller.job_event("default", {"metadata": {"name": "solo"}})  # not a stage job
    assert len(controller.queue) == 1
    assert asyncio.run(controller.queue.get()) == ("default", "sft-rm-grpo")
