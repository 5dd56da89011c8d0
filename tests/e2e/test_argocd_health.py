"""The Argo CD health check and actions (charts/kubetune/argocd) on objects the operator
really wrote: jobs driven through their phases on the dev cluster, health.lua evaluated (in
Argo CD's Lua 5.1 sandbox) on each object exactly as the API server returns it, and the
suspend/resume/restart actions applied the way Argo CD applies them (a merge patch from the
live object to the action's output).

``KUBETUNE_RECORD_ARGOCD_TESTDATA=1`` also writes each object into the customization's
``testdata/`` (as Argo CD's own testdata: no managedFields, uid, resourceVersion,
creationTimestamp or last-applied annotation; the random test namespace renamed
``ml-team``). health_test.yaml's expectations are written by hand from those objects.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import yaml

from kubetune.devcluster.testing import Cluster, wait_until
from tests.e2e.operator_helpers import (  # noqa: F401  (fixtures)
    Operators,
    apply,
    condition,
    finish_pod,
    finish_validation,
    job,
    job_status,
    manifest,
    ns_fixture,
    operator_fixture,
    operators_fixture,
    pods,
    wait_phase,
    worker_pods,
)
from tests.unit.argocd.argocd_lua import FINETUNEJOB, Customization

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ARGO = Customization(FINETUNEJOB)
RECORD = os.environ.get("KUBETUNE_RECORD_ARGOCD_TESTDATA", "") == "1"
NOISE = ("managedFields", "uid", "resourceVersion", "creationTimestamp", "selfLink")
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
#: the operator reads rank 0's progress on its poll interval, and an unreachable pod costs
#: a connect timeout on top: 30 s was not enough on a loaded 2-core CI machine
PROGRESS_WAIT = 90


def record(obj: dict[str, Any], name: str, *, action: bool = False) -> None:
    if not RECORD:
        return
    obj = json.loads(json.dumps(obj))
    meta = obj["metadata"]
    namespace = meta["namespace"]
    for key in NOISE:
        meta.pop(key, None)
    annotations = meta.get("annotations") or {}
    annotations.pop(LAST_APPLIED, None)
    if not annotations:
        meta.pop("annotations", None)
    text = yaml.safe_dump(obj, sort_keys=False, width=100).replace(namespace, "ml-team")
    folder = FINETUNEJOB / "actions" / "testdata" if action else FINETUNEJOB / "testdata"
    (folder / f"{name}.yaml").write_text(text)


def health(obj: dict[str, Any]) -> dict[str, str]:
    return ARGO.health(obj)


def expect(obj: dict[str, Any], status: str, message_start: str = "") -> dict[str, str]:
    got = health(obj)
    assert got["status"] == status, f"health {got} for status {json.dumps(obj.get('status'))}"
    assert got["message"].startswith(message_start), got
    return got


def merge_patch(old: Any, new: Any) -> Any:
    """RFC 7386 from ``old`` to ``new`` (what Argo CD sends for a patch action)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key in set(old) | set(new):
        if key not in new:
            patch[key] = None
        elif key not in old:
            patch[key] = new[key]
        elif old[key] != new[key]:
            patch[key] = merge_patch(old[key], new[key])
    return patch


def run_action(cluster: Cluster, ns: str, name: str, action: str) -> dict[str, Any]:
    """Discovery must offer ``action`` enabled; run it and patch the job like Argo CD."""
    live = job(cluster, ns, name)
    offered = {a["name"]: a for a in ARGO.discover(live)}
    assert not offered[action]["disabled"], f"{action} disabled on {live.get('status')}"
    new = ARGO.action(action, live)
    patch = merge_patch(live, new)
    assert set(patch) <= {"spec", "metadata"}, patch
    proc = cluster.kubectl(
        "patch",
        "finetunejob",
        name,
        "--type=merge",
        "-p",
        json.dumps(patch),
        "-o",
        "json",
        namespace=ns,
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_health_and_actions_through_a_job_life(
    cluster: Cluster, ns: str, operator: Operators
) -> None:
    # A new object, as the API server returns it before the operator has seen it.
    created = json.loads(
        cluster.kubectl(
            "create",
            "-f",
            "-",
            "-o",
            "json",
            input=yaml.safe_dump(manifest("life", ns)),
            namespace=ns,
        ).stdout
    )
    assert "status" not in created
    expect(created, "Progressing", "waiting for the operator")
    record(created, "progressing_newWithoutStatus")

    wait_phase(cluster, ns, "life", "Validating")
    obj = job(cluster, ns, "life")
    expect(obj, "Progressing", "validating")
    record(obj, "progressing_validating")
    record(obj, "validating", action=True)
    assert {a["name"]: a["disabled"] for a in ARGO.discover(obj)} == {
        "suspend": False,
        "resume": True,
        "restart": True,
    }

    finish_validation(cluster, ns, "life")
    wait_phase(cluster, ns, "life", "Running")
    # No progress document served yet: the operator cannot read it.
    unknown = wait_until(
        lambda: (
            condition(s := job_status(cluster, ns, "life"), "ProgressKnown").get("status")
            == "False"
            and s
        ),
        timeout=PROGRESS_WAIT,
        what="ProgressKnown=False",
    )
    assert unknown["phase"] == "Running"
    obj = job(cluster, ns, "life")
    assert "progress unknown: " in expect(obj, "Progressing")["message"]
    record(obj, "progressing_progressUnknown")

    rank0 = worker_pods(cluster, ns, "life", attempt=1)[0]
    operator.progress.serve(rank0, step=120, totalSteps=300, etaSeconds=360, loss=1.5)
    wait_until(
        lambda: (
            (s := job_status(cluster, ns, "life")).get("progress", {}).get("summary")
            == "120/300 (40%)"
            and condition(s, "ProgressKnown").get("status") == "True"
        ),
        timeout=PROGRESS_WAIT,
        what="progress 120/300",
    )
    obj = job(cluster, ns, "life")
    assert expect(obj, "Progressing")["message"] == "120/300 (40%)"
    record(obj, "progressing_running")
    record(obj, "running", action=True)
    assert {a["name"]: a["disabled"] for a in ARGO.discover(obj)} == {
        "suspend": False,
        "resume": True,
        "restart": False,
    }

    # An edit the running gang does not see (env applies to the next attempt).
    cluster.kubectl(
        "patch",
        "finetunejob",
        "life",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"env": [{"name": "EXTRA", "value": "1"}]}}),
        namespace=ns,
    )
    wait_until(
        lambda: (
            condition(job_status(cluster, ns, "life"), "UpdatesPending").get("status") == "True"
        ),
        timeout=30,
        what="UpdatesPending",
    )
    obj = job(cluster, ns, "life")
    expect(obj, "Progressing", "120/300 (40%); updates pending: spec.env changed")
    record(obj, "progressing_updatesPending")

    # suspend, through the action: the API server's answer has the new generation and the
    # old status -- Progressing until the operator acts on it.
    patched = run_action(cluster, ns, "life", "suspend")
    assert patched["spec"]["runPolicy"]["suspend"] is True
    assert patched["metadata"]["generation"] > patched["status"]["observedGeneration"]
    expect(patched, "Progressing", "waiting for the operator to observe generation")
    record(patched, "progressing_newGeneration")

    wait_phase(cluster, ns, "life", "Suspended")
    obj = job(cluster, ns, "life")
    assert expect(obj, "Suspended")["message"] == "suspended at 120/300"
    record(obj, "suspended")
    record(obj, "suspended", action=True)
    assert {a["name"]: a["disabled"] for a in ARGO.discover(obj)} == {
        "suspend": True,
        "resume": False,
        "restart": True,
    }

    resumed = run_action(cluster, ns, "life", "resume")
    assert resumed["spec"]["runPolicy"]["suspend"] is False
    wait_phase(cluster, ns, "life", "Running")
    pods = wait_until(
        lambda: [
            p for p in worker_pods(cluster, ns, "life") if p["status"].get("phase") == "Running"
        ],
        timeout=30,
        what="the resumed gang",
    )
    for pod in pods:
        finish_pod(cluster, ns, pod["metadata"]["name"], 0)
    wait_phase(cluster, ns, "life", "Succeeded")
    obj = job(cluster, ns, "life")
    expect(obj, "Healthy", "all 2 pods of attempt")
    record(obj, "healthy_succeeded")
    record(obj, "succeeded", action=True)
    assert {a["name"]: a["disabled"] for a in ARGO.discover(obj)} == {
        "suspend": True,
        "resume": True,
        "restart": True,
    }


def test_health_of_waiting_blocked_and_failed_jobs(
    cluster: Cluster, ns: str, operator: Operators
) -> None:
    # The API server refuses the pods: Degraded until someone creates the ServiceAccount.
    apply(cluster, manifest("nosa", ns, serviceAccountName="e2e-missing"))
    wait_until(
        lambda: (
            condition(job_status(cluster, ns, "nosa"), "PodCreationFailed").get("status") == "True"
        ),
        timeout=30,
        what="PodCreationFailed",
    )
    obj = job(cluster, ns, "nosa")
    expect(obj, "Degraded", "FailedCreate: the API server refused to create pod")
    record(obj, "degraded_podCreationFailed")

    # Two gangs of 3 x 8 GPUs on 4 nodes: the second waits for room (Progressing) ...
    big = {
        "resources": {"nodes": 3},
        "hyperparameters": {"globalBatchSize": 48, "microBatchSize": 2},
    }
    apply(cluster, manifest("first", ns, **big))
    finish_validation(cluster, ns, "first")
    wait_phase(cluster, ns, "first", "Running")
    apply(cluster, manifest("second", ns, **big))
    finish_validation(cluster, ns, "second")
    wait_until(
        lambda: (
            condition(job_status(cluster, ns, "second"), "Admitted").get("reason")
            == "WaitingForCapacity"
        ),
        timeout=30,
        what="WaitingForCapacity",
    )
    obj = job(cluster, ns, "second")
    assert expect(obj, "Progressing")["message"] == "queued: waiting for room (1/3 fit)"
    record(obj, "progressing_waitingForCapacity")
    record(obj, "queued", action=True)
    assert {a["name"]: a["disabled"] for a in ARGO.discover(obj)} == {
        "suspend": False,
        "resume": True,
        "restart": False,
    }

    # restart, through the action: the annotation lands (what it does is the operator's).
    restarted = run_action(cluster, ns, "first", "restart")
    assert restarted["metadata"]["annotations"]["kubetune.io/restart"].endswith("Z")

    # ... a gang larger than the cluster can never run (Degraded).
    apply(
        cluster,
        manifest(
            "huge",
            ns,
            resources={"nodes": 5},
            hyperparameters={"globalBatchSize": 80, "microBatchSize": 2},
        ),
    )
    finish_validation(cluster, ns, "huge")
    wait_until(
        lambda: (
            condition(job_status(cluster, ns, "huge"), "Admitted").get("reason")
            in ("GangNeverFits", "GangUnschedulable")
        ),
        timeout=30,
        what="GangNeverFits",
    )
    obj = job(cluster, ns, "huge")
    reason = condition(obj["status"], "Admitted")["reason"]
    expect(obj, "Degraded", f"{reason}: ")
    record(obj, "degraded_" + reason[0].lower() + reason[1:])
    # Not placed within schedulingTimeoutSeconds (10 s): released and retried, still Degraded.
    wait_until(
        lambda: (
            condition(job_status(cluster, ns, "huge"), "Admitted").get("reason")
            == "GangUnschedulable"
        ),
        timeout=40,
        what="GangUnschedulable",
    )
    obj = job(cluster, ns, "huge")
    expect(obj, "Degraded", "GangUnschedulable: ")
    record(obj, "degraded_gangUnschedulable")

    # A validation pod whose image cannot be pulled (the kubelet's waiting reason, written
    # as a kubelet would: KWOK runs no image): Degraded, not merely "validating".
    apply(cluster, manifest("pull", ns))
    pod = wait_until(
        lambda: pods(cluster, ns, "pull", role="validation"), timeout=30, what="validation pod"
    )[-1]
    waiting = {
        "name": pod["spec"]["containers"][0]["name"],
        "image": pod["spec"]["containers"][0]["image"],
        "imageID": "",
        "ready": False,
        "restartCount": 0,
        "started": False,
        "state": {
            "waiting": {
                "reason": "ImagePullBackOff",
                "message": 'Back-off pulling image "kubetune.invalid/trainer:e2e"',
            }
        },
    }
    cluster.kubectl(
        "patch",
        "pod",
        pod["metadata"]["name"],
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"containerStatuses": [waiting]}}),
        namespace=ns,
    )
    wait_until(
        lambda: (
            condition(job_status(cluster, ns, "pull"), "Validated").get("reason")
            == "ImagePullBackOff"
        ),
        timeout=30,
        what="Validated ImagePullBackOff",
    )
    obj = job(cluster, ns, "pull")
    expect(obj, "Degraded", "ImagePullBackOff: validation pod pull-validate-1 cannot start")
    record(obj, "degraded_imagePullBackOff")

    # A permanent failure: the trainer's validation finds invalid data (exit 65).
    apply(cluster, manifest("bad", ns))
    finish_validation(cluster, ns, "bad", exit_code=65, message="train.jsonl line 3: not JSON")
    wait_phase(cluster, ns, "bad", "Failed")
    obj = job(cluster, ns, "bad")
    failed = condition(obj["status"], "Failed")
    got = expect(obj, "Degraded", f"{failed['reason']}: ")
    assert "train.jsonl line 3: not JSON" in got["message"]
    record(obj, "degraded_failed")
    record(obj, "failed", action=True)
    assert {a["name"]: a["disabled"] for a in ARGO.discover(obj)} == {
        "suspend": True,
        "resume": True,
        "restart": True,
    }
