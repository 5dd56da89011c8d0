"""next_actions: one stage at a time, wired outputs, owner refs, failure and retry."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api import pipeline as api
from kubetune_operator.pipeline.plan import Actions, next_actions, stage_job_name

REPO = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
UID = "pipe-uid"


@pytest.fixture
def body() -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "examples/pipelines/sft-rm-grpo.yaml").read_text())
    doc["metadata"].update(uid=UID, generation=1, resourceVersion="7")
    return doc


def finished(manifest: dict[str, Any], phase: str, message: str = "") -> dict[str, Any]:
    """The job the API server holds after ``manifest`` was created and ran to ``phase``."""
    job = copy.deepcopy(manifest)
    job["metadata"]["uid"] = f"uid-{job['metadata']['name']}"
    job["status"] = {
        "phase": phase,
        "startTime": "2026-01-02T01:00:00Z",
        "completionTime": "2026-01-02T02:00:00Z" if phase in ("Succeeded", "Failed") else None,
        "conditions": [{"type": "Failed", "status": "True", "message": message}]
        if phase == "Failed"
        else [],
    }
    return job


def advance(body: dict[str, Any], jobs: dict[str, Any], phase: str = "Succeeded") -> Actions:
    """Reconcile; the one job created runs to ``phase``."""
    actions = next_actions(body, jobs, NOW)
    for manifest in actions.create:
        jobs[manifest["metadata"]["name"]] = finished(manifest, phase, "OOM at step 3")
    return actions


def phases(actions: Actions) -> list[str]:
    return [s.phase for s in actions.status.stages]


def test_first_reconcile_creates_only_the_first_stage_owned_and_labelled(
    body: dict[str, Any],
) -> None:
    actions = next_actions(body, {}, NOW)
    assert [m["metadata"]["name"] for m in actions.create] == ["sft-rm-grpo-sft"]
    assert actions.delete == []
    job = actions.create[0]
    meta = job["metadata"]
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTunePipeline",
            "name": "sft-rm-grpo",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["labels"] == {"kubetune.io/pipeline": "sft-rm-grpo", "kubetune.io/stage": "sft"}
    assert meta["namespace"] == "default"
    assert json.loads(meta["annotations"][api.ANNOTATION_LINEAGE]) == {
        "pipeline": "sft-rm-grpo",
        "stage": "sft",
        "inputs": {},
    }
    assert job["spec"]["output"]["uri"] == "pvc://checkpoints/sft-rm-grpo/sft"
    status = actions.status
    assert (status.phase, status.current_stage, status.observed_generation) == ("Running", "sft", 1)
    assert phases(actions) == ["Pending", "Waiting", "Waiting"]
    assert [s.job for s in status.stages] == [
        "sft-rm-grpo-sft",
        "sft-rm-grpo-rm",
        "sft-rm-grpo-grpo",
    ]


def test_stages_run_in_order_and_wire_upstream_outputs(body: dict[str, Any]) -> None:
    jobs: dict[str, Any] = {}
    advance(body, jobs, phase="Running")
    running = next_actions(body, jobs, NOW)
    assert running.create == [] and phases(running) == ["Running", "Waiting", "Waiting"]
    assert running.status.stages[0].start_time == datetime(2026, 1, 2, 1, tzinfo=UTC)

    jobs["sft-rm-grpo-sft"]["status"]["phase"] = "Succeeded"
    rm = advance(body, jobs)
    assert [m["metadata"]["name"] for m in rm.create] == ["sft-rm-grpo-rm"]
    assert rm.create[0]["spec"]["model"]["uri"] == "pvc://checkpoints/sft-rm-grpo/sft"
    assert phases(rm) == ["Succeeded", "Pending", "Waiting"]

    grpo = advance(body, jobs)
    (job,) = grpo.create
    assert job["spec"]["model"]["uri"] == "pvc://checkpoints/sft-rm-grpo/sft"
    assert job["spec"]["rlhf"]["reward"]["model"] == "pvc://checkpoints/sft-rm-grpo/rm"
    lineage = json.loads(job["metadata"]["annotations"][api.ANNOTATION_LINEAGE])
    assert lineage["inputs"] == {
        "model": {
            "stage": "sft",
            "job": "sft-rm-grpo-sft",
            "output": "pvc://checkpoints/sft-rm-grpo/sft",
        },
        "rewardModel": {
            "stage": "rm",
            "job": "sft-rm-grpo-rm",
            "output": "pvc://checkpoints/sft-rm-grpo/rm",
        },
    }

    done = next_actions(body, jobs, NOW)
    assert done.create == [] and done.status.phase == "Succeeded"
    assert phases(done) == ["Succeeded"] * 3
    assert done.status.stages[2].completion_time == datetime(2026, 1, 2, 2, tzinfo=UTC)
    succeeded = {c.type: c.status for c in done.status.conditions}
    assert succeeded == {"Valid": "True", "Succeeded": "True", "Failed": "False"}


def test_failed_stage_fails_the_pipeline_and_retry_reruns_only_that_stage(
    body: dict[str, Any],
) -> None:
    jobs: dict[str, Any] = {}
    advance(body, jobs)  # sft succeeds
    advance(body, jobs, phase="Failed")  # rm fails
    failed = next_actions(body, jobs, NOW)
    assert failed.create == [] and failed.delete == []
    assert failed.status.phase == "Failed" and failed.status.current_stage == "rm"
    assert failed.status.message == "stage rm failed: OOM at step 3"
    assert phases(failed) == ["Succeeded", "Failed", "Waiting"]
    assert [e.reason for e in failed.events] == ["StageFailed"]
    body["status"] = json.loads(failed.status.model_dump_json(by_alias=True, exclude_none=True))
    assert next_actions(body, jobs, NOW).events == []  # the Warning is posted once

    body["spec"]["retryGeneration"] = 1
    body["metadata"]["generation"] = 2
    retry = next_actions(body, jobs, NOW)
    assert retry.create == []
    assert [(d.name, d.uid) for d in retry.delete] == [("sft-rm-grpo-rm", "uid-sft-rm-grpo-rm")]
    assert retry.status.phase == "Running" and retry.status.observed_generation == 2

    del jobs["sft-rm-grpo-rm"]  # the API server deleted it
    again = next_actions(body, jobs, NOW)
    (job,) = again.create  # only the failed stage: sft is never re-run
    assert job["metadata"]["name"] == "sft-rm-grpo-rm"
    assert job["metadata"]["annotations"][api.ANNOTATION_RETRY] == "1"
    assert job["spec"]["output"]["uri"] == "pvc://checkpoints/sft-rm-grpo/rm"  # resumes there

    jobs["sft-rm-grpo-rm"] = finished(job, "Failed", "OOM again")
    twice = next_actions(body, jobs, NOW)  # the same retryGeneration is served once
    assert twice.delete == [] and twice.create == [] and twice.status.phase == "Failed"
    assert twice.status.stages[1].retry_generation == 1


def test_input_naming_a_later_stage_is_refused_with_a_condition(body: dict[str, Any]) -> None:
    body["spec"]["stages"][1]["inputs"]["model"] = "grpo"
    actions = next_actions(body, {}, NOW)
    assert actions.create == [] and actions.status.phase == "Failed"
    valid = next(c for c in actions.status.conditions if c.type == "Valid")
    assert (valid.status, valid.reason) == ("False", "InvalidSpec")
    assert "takes model from 'grpo', which is not an earlier stage" in valid.message


def test_stage_that_would_be_an_invalid_job_is_not_created(body: dict[str, Any]) -> None:
    del body["spec"]["stages"][0]["spec"]["dataset"]["format"]
    actions = next_actions(body, {}, NOW)
    assert actions.create == []
    assert actions.status.phase == "Failed" and actions.status.current_stage == "sft"
    assert "spec.dataset.format: Required value" in str(actions.status.message)


def test_job_of_that_name_owned_by_another_is_left_alone(body: dict[str, Any]) -> None:
    stranger = finished(next_actions(body, {}, NOW).create[0], "Succeeded")
    stranger["metadata"]["ownerReferences"] = []
    actions = next_actions(body, {"sft-rm-grpo-sft": stranger}, NOW)
    assert actions.create == [] and actions.delete == []
    assert actions.status.phase == "Failed"
    assert "exists, not owned by sft-rm-grpo" in str(actions.status.message)


def test_long_names_are_shortened_stably() -> None:
    name = stage_job_name("a-very-long-pipeline-name-for-the-support-bot-team", "reward-model")
    assert len(name) <= 52 and name.startswith("a-very-long-pipeline")
    assert name == stage_job_name(
        "a-very-long-pipeline-name-for-the-support-bot-team", "reward-model"
    )
    assert name != stage_job_name(
        "a-very-long-pipeline-name-for-the-support-bot-team", "reward-modem"
    )
    assert stage_job_name("p", "sft") == "p-sft"
