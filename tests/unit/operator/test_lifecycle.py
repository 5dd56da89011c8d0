"""The FineTuneJob state machine, driven through an in-memory cluster (see conftest)."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from typing import Any

from kubetune_operator import naming
from kubetune_operator.lifecycle import decide
from kubetune_operator.observed import NodeView, ProgressSample, format_time
from kubetune_operator.plan import CreatePod, DeleteJob, DeletePod, UngatePod


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0]["env"]}


def reasons(cluster: Any) -> list[str]:
    return [reason for _, reason, _ in cluster.events]


# -- validation ------------------------------------------------------------------------------
def test_new_job_validates_on_cpu_before_any_gpu(make_cluster: Any) -> None:
    c = make_cluster()
    plan = c.step()
    assert c.status["phase"] == "Validating"
    assert c.status["progress"]["summary"] == "validating"
    (pod,) = c.validation_pods()
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits
    assert not c.workers(), "no GPU pod before validation passed"
    assert c.config_maps, "the validation pod reads the resolved config"
    assert c.condition("Validated")["status"] == "Unknown"
    assert (plan.events[0].type, plan.events[0].reason) == ("Normal", "Validating")


def test_bad_dataset_fails_in_validation_without_gpu_pods(make_cluster: Any) -> None:
    c = make_cluster()
    c.step()
    name = c.validation_pods()[0]["metadata"]["name"]
    c.finish(name, 65, message="row 17: messages must be a list of {role, content}")
    c.step()
    assert c.status["phase"] == "Failed"
    cond = c.condition("Validated")
    assert cond["status"] == "False" and cond["reason"] == "InvalidData"
    failed = c.condition("Failed")
    assert failed["reason"] == "InvalidData"
    assert "row 17: messages must be a list" in failed["message"]
    assert not c.workers()
    assert c.status["progress"]["summary"] == "failed: InvalidData"
    assert ("Warning", "Failed") in [(t, r) for t, r, _ in c.events]


def test_missing_model_reason(make_cluster: Any) -> None:
    c = make_cluster()
    c.step()
    c.finish(c.validation_pods()[0]["metadata"]["name"], 66, message="model not found")
    c.step()
    assert c.condition("Failed")["reason"] == "ModelUnavailable"


def test_validation_rerun_after_node_loss_then_gives_up(make_cluster: Any) -> None:
    c = make_cluster()
    c.step()
    first = c.validation_pods()[0]["metadata"]["name"]
    c.place(first, "gpu-1")
    del c.nodes["gpu-1"]
    c.step()
    names = sorted(p["metadata"]["name"] for p in c.validation_pods())
    assert names == ["tune-validate-2"], "lost validation pod replaced by a second run"
    assert c.status["phase"] == "Validating"
    # The re-run keeps away from the node that lost the first one (a node deleted and
    # re-added, or still listed by the scheduler, must not take every re-run).
    terms = c.validation_pods()[0]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms == [
        {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["gpu-1"]}]}
    ]
    # Every re-run is lost too: after validation_reruns re-runs the job gives up, naming
    # the infrastructure failure, and never starts a GPU pod.
    reruns = c.settings.validation_reruns
    assert reruns >= 1
    for run in range(2, reruns + 2):
        (pod,) = c.validation_pods()
        assert pod["metadata"]["name"] == f"tune-validate-{run}"
        assert c.status["phase"] == "Validating"
        node = f"gpu-lost-{run}"
        c.nodes[node] = dataclasses.replace(next(iter(c.nodes.values())), name=node)
        c.place(pod["metadata"]["name"], node)
        del c.nodes[node]
        c.step()
    assert c.status["phase"] == "Failed"
    validated = c.condition("Validated")
    assert validated["status"] == "False"
    failed = c.condition("Failed")
    assert failed["reason"] == validated["reason"]
    assert "validation could not run" in failed["message"]
    created = [
        a.body["metadata"]["name"]
        for plan in c.plans
        for a in plan.actions
        if isinstance(a, CreatePod)
    ]
    assert created == [f"tune-validate-{run}" for run in range(1, reruns + 2)], "no extra run"
    assert not c.workers()


def test_validation_timeout(make_cluster: Any) -> None:
    c = make_cluster()
    c.step()
    c.advance(c.settings.validation_timeout_seconds + 60)
    c.step()
    assert c.condition("Failed")["reason"] == "ValidationTimeout"


def test_validation_disabled(make_cluster: Any, settings_factory: Any) -> None:
    c = make_cluster(settings=settings_factory(validation_enabled=False))
    c.step()
    assert c.condition("Validated")["reason"] == "ValidationDisabled"
    assert len(c.workers()) == 2


def container_waiting(c: Any, name: str, reason: str, message: str = "") -> None:
    """The kubelet cannot start the pod's container (placed, Pending, waiting)."""
    pod = c.pods[name]
    pod["spec"]["nodeName"] = pod["spec"].get("nodeName") or "gpu-0"
    pod["status"]["phase"] = "Pending"
    pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}]
    container = pod["spec"]["containers"][0]["name"]
    waiting = {"reason": reason, **({"message": message} if message else {})}
    pod["status"]["containerStatuses"] = [{"name": container, "state": {"waiting": waiting}}]


def test_missing_secret_of_validation_pod_is_named_at_once(make_cluster: Any) -> None:
    c = make_cluster()
    c.step()
    name = c.validation_pods()[0]["metadata"]["name"]
    container_waiting(c, name, "CreateContainerConfigError", 'secret "hf-token" not found')
    c.advance(2)
    c.step()
    cond = c.condition("Validated")
    assert cond["status"] == "Unknown"
    assert cond["reason"] == "CreateContainerConfigError"
    assert 'secret "hf-token" not found' in cond["message"]
    assert c.status["progress"]["summary"] == "validating: CreateContainerConfigError"
    warnings = [m for t, r, m in c.events if (t, r) == ("Warning", "CreateContainerConfigError")]
    assert len(warnings) == 1 and "hf-token" in warnings[0]
    c.advance(5)
    c.step()
    assert len([r for r in reasons(c) if r == "CreateContainerConfigError"]) == 1, "once"
    # Bounded by startup_timeout_seconds (not the longer validation timeout), naming it.
    c.advance(c.settings.startup_timeout_seconds)
    c.step()
    failed = c.condition("Failed")
    assert failed["reason"] == "CreateContainerConfigError"
    assert "hf-token" in failed["message"]


# -- gang creation -----------------------------------------------------------------------------
def test_validation_pass_creates_gang_behind_gates(make_cluster: Any) -> None:
    c = make_cluster()
    c.step()
    c.pass_validation()
    plan = decide(c.observe(), c.settings)
    created = [a.body for a in plan.actions if isinstance(a, CreatePod)]
    assert all(b["spec"]["schedulingGates"] == [{"name": naming.GANG_GATE}] for b in created)
    c.apply(plan)
    assert c.condition("Validated")["status"] == "True"
    (vpod,) = c.validation_pods()
    assert vpod["status"]["phase"] == "Succeeded", "kept for its logs; holds nothing"
    pods = c.workers(1)
    assert [p["metadata"]["name"] for p in pods] == ["tune-a1-0", "tune-a1-1"]
    assert all(not p["spec"]["schedulingGates"] for p in pods), "whole gang exists: released"
    st = c.status
    assert st["phase"] == "Queued" and st["attempts"] == 1 and st["gpus"] == 16
    assert st["startTime"]
    assert c.condition("Admitted")["status"] == "Unknown"
    assert st["lineage"]["resolvedConfigHash"]
    assert "tune" in c.services


def test_gates_removed_only_when_the_whole_gang_exists(make_cluster: Any) -> None:
    c = make_cluster(resources={"nodes": 3}, hyperparameters={"globalBatchSize": 48})
    c.step()
    c.pass_validation()
    plan = decide(c.observe(), c.settings)
    kinds = [type(a).__name__ for a in plan.actions]
    creates = [i for i, k in enumerate(kinds) if k == "CreatePod"]
    ungates = [i for i, k in enumerate(kinds) if k == "UngatePod"]
    assert len(creates) == len(ungates) == 3
    assert max(creates) < min(ungates), "gates come off only after every create"
    # The operator dies after creating one of three pods (status was written first).
    c.apply(plan, limit=creates[0] + 1)
    assert len(c.workers()) == 1
    assert c.workers()[0]["spec"]["schedulingGates"], "a partial gang stays gated"
    plan = c.step()
    assert sorted(plan.pods_to_create()) == ["tune-a1-1", "tune-a1-2"]
    assert sorted(a.name for a in plan.actions if isinstance(a, UngatePod)) == [
        "tune-a1-0",
        "tune-a1-1",
        "tune-a1-2",
    ]
    assert all(not p["spec"]["schedulingGates"] for p in c.workers())


def test_all_placed_and_running_is_running(make_cluster: Any) -> None:
    c = make_cluster()
    c.start_running()
    st = c.status
    assert st["phase"] == "Running"
    assert c.condition("Running")["status"] == "True"
    assert c.condition("Admitted")["reason"] == "GangScheduled"
    assert st["progress"]["summary"] == "running"
    phases = [r for t, r, _ in c.events if r in ("Validating", "Queued", "Running")]
    assert phases == ["Validating", "Queued", "Running"], "an Event for every transition"


def test_decisions_are_idempotent(make_cluster: Any) -> None:
    c = make_cluster()
    c.step()
    c.pass_validation()
    obs = c.observe()
    first = decide(obs, c.settings)
    second = decide(obs, c.settings)
    assert first.status == second.status
    assert first.pods_to_create() == second.pods_to_create()


def test_crash_after_status_before_pods_recreates_same_names(make_cluster: Any) -> None:
    c = make_cluster()
    c.step()
    c.pass_validation()
    c.step(limit=0)  # status written, no pod created
    assert c.status["attempts"] == 1 and not c.workers()
    plan = c.step()
    assert plan.pods_to_create() == ["tune-a1-0", "tune-a1-1"]
    plan = c.step()
    assert not plan.pods_to_create(), "no duplicate gang"


def test_newer_pods_than_status_win(make_cluster: Any) -> None:
    c = make_cluster()
    c.start_running()
    # Status lost its last write (attempt 2 gang exists already).
    for body in c.workers(1):
        body["metadata"]["labels"][naming.LABEL_ATTEMPT] = "2"
    plan = c.step()
    assert not plan.pods_to_create()
    assert c.status["attempts"] == 2


# -- failures and restarts ---------------------------------------------------------------------
def test_retryable_failure_restarts_whole_gang_from_checkpoint(make_cluster: Any) -> None:
    c = make_cluster()
    c.start_running()
    c.progress = ProgressSample(
        {
            "state": "training",
            "step": 50,
            "totalSteps": 200,
            "lastCheckpointStep": 40,
            "lastCheckpointPath": "/mnt/pvc/ckpt/tune/checkpoints/step-40",
        },
        c.now,
        attempt=1,
    )
    c.step()
    assert c.status["lastCheckpoint"]["step"] == 40
    c.finish("tune-a1-1", 75, message="NCCL watchdog timeout")
    plan = c.step()
    st = c.status
    assert st["attempts"] == 2
    assert st["phase"] == "Queued"
    restarting = c.condition("Restarting")
    assert restarting["status"] == "True" and restarting["reason"] == "Interrupted"
    assert "step 40" in restarting["message"] and "NCCL watchdog timeout" in restarting["message"]
    assert sorted(plan.pods_to_delete()) == ["tune-a1-0", "tune-a1-1"], "the WHOLE gang goes"
    assert not c.workers()
    assert plan.metrics and any(
        m.kind == "restart" and m.label == "Interrupted" for m in plan.metrics
    )
    # Backoff: nothing before 10s.
    c.advance(5)
    assert not c.step().pods_to_create()
    assert "starts in" in c.status["progress"]["summary"]
    c.advance(5)
    plan = c.step()
    assert plan.pods_to_create() == ["tune-a2-0", "tune-a2-1"]
    new = c.workers(2)
    assert env_of(new[0])["KUBETUNE_ATTEMPT"] == "2"
    assert "--rdzv-id=uid-tune-2" in new[0]["spec"]["containers"][0]["command"]
    cm = json.loads(c.config_maps["tune-config"]["data"]["job.json"])
    assert cm["attempt"] == 2
    assert c.condition("Restarting")["status"] == "False"
    assert c.status["lastCheckpoint"]["step"] == 40, "resume point kept"
    assert any("resuming from checkpoint step 40" in m for _, _, m in c.events)


def test_graceful_deletion_is_awaited_before_the_next_gang(make_cluster: Any) -> None:
    c = make_cluster()
    c.start_running()
    c.graceful_delete = True
    c.finish("tune-a1-0", 75)
    c.step()
    c.advance(30)
    assert not c.step().pods_to_create(), "old pods still terminating hold GPUs"
    c.finish_gone_deletions()
    assert c.step().pods_to_create() == ["tune-a2-0", "tune-a2-1"]


def test_backoff_grows_and_limit_fails(make_cluster: Any) -> None:
    c = make_cluster(runPolicy={"backoffLimit": 1})
    c.start_running()
    c.finish("tune-a1-0", 137, reason="OOMKilled")
    c.step()
    assert c.condition("Restarting")["reason"] == "OOMKilled"
    hint = c.condition("Restarting")["message"]
    assert "spec.resources.memory" in hint and "spec.runPolicy.suspend to true" in hint, (
        "actionable: resources change only while suspended"
    )
    c.advance(10)
    c.step()
    c.step()
    c.place_all(2)
    c.step()
    assert c.status["phase"] == "Running" and c.status["attempts"] == 2
    c.finish("tune-a2-1", 1, message="Traceback: boom")
    c.step()
    assert c.status["phase"] == "Failed"
    failed = c.condition("Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "Traceback: boom" in failed["message"]


def test_permanent_failure_fails_at_once_with_trainer_message(make_cluster: Any) -> None:
    c = make_cluster()
    c.start_running()
    c.finish("tune-a1-0", 79, message="loss is NaN at step 12")
    plan = c.step()
    assert c.status["phase"] == "Failed"
    failed = c.condition("Failed")
    assert failed["reason"] == "NumericalDivergence"
    assert "loss is NaN at step 12" in failed["message"]
    assert c.status["attempts"] == 1
    assert plan.pods_to_delete() == ["tune-a1-1"], "the still-running rank is stopped"
    assert c.status["completionTime"]
    assert any(m.kind == "failure" and m.label == "NumericalDivergence" for m in plan.metrics)


def test_permanent_beats_collateral_exits(make_cluster: Any) -> None:
    c = make_cluster()
    c.start_running()
    c.finish("tune-a1-0", 1, message="peer closed connection")
    c.finish("tune-a1-1", 65, message="bad row")
    c.step()
    assert c.condition("Failed")["reason"] == "InvalidData"


def test_node_deleted_counts_as_node_lost(make_cluster: Any) -> None:
    c = make_cluster()
    c.start_running()
    node = c.pods["tune-a1-1"]["spec"]["nodeName"]
    del c.nodes[node]
    plan = c.step()
    assert c.condition("Restarting")["reason"] == "NodeLost"
    forced = {a.name: a.force for a in plan.actions if isinstance(a, DeletePod)}
    assert forced["tune-a1-1"] is True, "no kubelet will confirm: force delete"
    assert forced["tune-a1-0"] is False


def test_not_ready_node_within_grace_is_tolerated(make_cluster: Any) -> None:
    c = make_cluster()
    c.start_running()
    node = c.pods["tune-a1-0"]["spec"]["nodeName"]
    c.nodes[node] = NodeView(node, False, c.now)
    plan = c.step()
    assert c.status["phase"] == "Running"
    assert plan.requeue_after is not None and plan.requeue_after <= 20
    c.advance(21)
    c.step()
    assert c.condition("Restarting")["reason"] == "NodeLost"
    assert "NotReady" in c.condition("Restarting")["message"]


def test_preemption_is_retryable(make_cluster: Any) -> None:
    c = make_cluster()
    c.start_running()
    pod = c.pods["tune-a1-1"]
    pod["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:05Z"
    pod["status"]["conditions"].append(
        {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "PreemptionByScheduler",
            "message": "preempted by team-b/urgent",
        }
    )
    c.step()
    assert c.condition("Restarting")["reason"] == "Preempted"
    assert "team-b/urgent" in c.condition("Restarting")["message"]


def test_eviction_reason(make_cluster: Any) -> None:
    c = make_cluster()
    c.start_running()
    c.finish("tune-a1-0", 137, pod_reason="Evicted")
    c.step()
    assert c.condition("Restarting")["reason"] == "Evicted"


def test_vanished_pod_after_release_is_a_failure(make_cluster: Any) -> None:
    c = make_cluster()
    c.start_running()
    del c.pods["tune-a1-1"]
    c.step()
    assert c.condition("Restarting")["reason"] == "PodLost"


def test_external_deletion_is_a_failure(make_cluster: Any) -> None:
    c = make_cluster()
    c.start_running()
    c.pods["tune-a1-0"]["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:09Z"
    c.step()
    assert c.condition("Restarting")["reason"] == "PodDeleted"


def test_success_when_all_ranks_complete(make_cluster: Any) -> None:
    c = make_cluster()
    c.start_running()
    c.finish("tune-a1-0", 0)
    c.step()
    assert c.status["phase"] == "Running", "waiting for the other rank"
    c.finish("tune-a1-1", 0)
    c.step()
    st = c.status
    assert st["phase"] == "Succeeded"
    assert st["outputUri"] == "pvc://ckpt/tune"
    assert st["completionTime"]
    assert st["progress"]["summary"] == "done" and st["progress"]["percent"] == 100
    assert c.condition("Succeeded")["status"] == "True"


def test_job_that_succeeded_before_evaluation_gates_gets_a_verdict(make_cluster: Any) -> None:
    """An operator upgrade must not leave old jobs without Promotable: a ModelRollout of
    their model would wait for a verdict for ever."""
    c = make_cluster()
    c.start_running()
    c.finish("tune-a1-0", 0)
    c.finish("tune-a1-1", 0)
    c.step()
    assert c.status["phase"] == "Succeeded"
    assert c.job is not None
    st = c.job["status"]
    st["conditions"] = [x for x in st["conditions"] if x["type"] != "Promotable"]
    assert c.condition("Promotable") is None
    c.step()
    promotable = c.condition("Promotable")
    assert promotable is not None and promotable["status"] == "True"
    assert promotable["reason"] == "NoEvaluationGates"


# -- placement ---------------------------------------------------------------------------------
def test_unplaceable_gang_is_released_and_retried(make_cluster: Any) -> None:
    c = make_cluster(resources={"nodes": 5}, hyperparameters={"globalBatchSize": 80})
    c.step()
    c.pass_validation()
    c.step()
    c.step()  # ungated
    for i in range(4):
        c.place(f"tune-a1-{i}", f"gpu-{i}")
    msg = "0/6 nodes are available: 4 Insufficient nvidia.com/gpu"
    c.unschedulable("tune-a1-4", msg)
    c.step()
    assert c.status["phase"] == "Queued"
    assert c.condition("Admitted")["reason"] == "GangPending"
    assert "4/5" in c.status["progress"]["summary"]
    c.advance(61)
    plan = c.step()
    admitted = c.condition("Admitted")
    assert admitted["status"] == "False" and admitted["reason"] == "GangUnschedulable"
    assert msg in admitted["message"]
    assert len(plan.pods_to_delete()) == 5 and not c.workers(), "holds nothing"
    assert c.status["attempts"] == 1, "not a failure"
    assert ("Warning", "GangUnschedulable") in [(t, r) for t, r, _ in c.events]
    c.advance(10)
    assert not c.step().pods_to_create()
    c.advance(21)
    assert c.step().pods_to_create() == [f"tune-a1-{i}" for i in range(5)]


def gpu_node(name: str, gpus: int = 8, **extra: Any) -> NodeView:
    alloc = (
        ("cpu", "64"),
        ("ephemeral-storage", "2Ti"),
        ("memory", "512Gi"),
        ("nvidia.com/gpu", str(gpus)),
        ("pods", "110"),
    )
    return NodeView(name, True, None, allocatable=alloc, **extra)


def test_a_gang_no_node_can_ever_hold_says_so_at_once(make_cluster: Any) -> None:
    c = make_cluster(resources={"nodes": 1, "gpusPerNode": 16}, hyperparameters={})
    c.nodes = {f"gpu-{i}": gpu_node(f"gpu-{i}") for i in range(3)}
    c.step()
    c.pass_validation()
    c.step()
    c.unschedulable("tune-a1-0", "0/3 nodes are available: 3 Insufficient nvidia.com/gpu")
    plan = c.step()
    admitted = c.condition("Admitted")
    assert admitted["reason"] == "NoNodeFits"
    assert "0/3 nodes could ever fit it" in admitted["message"]
    assert "nvidia.com/gpu=16" in admitted["message"]
    assert "the most any node has: nvidia.com/gpu 8" in admitted["message"]
    assert c.status["progress"]["summary"] == "unplaceable: no node fits"
    warnings = [m for t, r, m in c.events if (t, r) == ("Warning", "NoNodeFits")]
    assert len(warnings) == 1 and "tune-a1-0" in warnings[0]
    assert plan.requeue_after is not None, "still released and retried (nodes may be added)"
    c.advance(5)
    c.step()
    assert [r for r in reasons(c) if r == "NoNodeFits"] == ["NoNodeFits"], "one Event"


def test_waiting_for_room_is_not_never_fitting(make_cluster: Any) -> None:
    c = make_cluster(resources={"nodes": 1}, hyperparameters={})
    c.nodes = {"gpu-0": gpu_node("gpu-0")}
    c.step()
    c.pass_validation()
    c.step()
    c.unschedulable("tune-a1-0", "0/1 nodes are available: 1 Insufficient nvidia.com/gpu")
    c.step()
    assert c.condition("Admitted")["reason"] == "GangPending"
    assert "NoNodeFits" not in reasons(c)


def test_selector_and_taints_that_exclude_every_node(make_cluster: Any) -> None:
    from kubetune_operator.observed import Taint

    c = make_cluster(
        resources={
            "nodes": 1,
            "nodeSelector": {"gpu.example.com/model": "h100"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "training"}],
        },
        hyperparameters={},
    )
    c.nodes = {
        "a100": gpu_node("a100", labels=(("gpu.example.com/model", "a100"),)),
        "h100": gpu_node(
            "h100",
            labels=(("gpu.example.com/model", "h100"),),
            taints=(
                Taint("dedicated", "inference", "NoSchedule"),
                Taint("node.kubernetes.io/not-ready", "", "NoSchedule"),  # passes
            ),
        ),
    }
    c.step()
    c.pass_validation()
    c.step()
    c.step()
    message = c.condition("Admitted")["message"]
    assert c.condition("Admitted")["reason"] == "NoNodeFits"
    assert "did not match the nodeSelector (gpu.example.com/model)" in message
    assert "taint dedicated=inference:NoSchedule" in message
    # Tolerated: the taint no longer excludes the node.
    c.nodes["h100"] = gpu_node(
        "h100",
        labels=(("gpu.example.com/model", "h100"),),
        taints=(Taint("dedicated", "training", "NoSchedule"),),
    )
    c.step()
    assert c.condition("Admitted")["reason"] == "GangPending"


def test_gang_that_cannot_start_says_why_and_releases_its_gpus(make_cluster: Any) -> None:
    c = make_cluster()
    c.step()
    c.pass_validation()
    c.step()
    c.place("tune-a1-0", "gpu-0")
    c.place("tune-a1-1", "gpu-1", run=False)
    container_waiting(
        c, "tune-a1-1", "ImagePullBackOff", 'Back-off pulling image "registry/trainer:typo"'
    )
    plan = c.step()
    running = c.condition("Running")
    assert running["status"] == "False" and running["reason"] == "ImagePullBackOff"
    assert "tune-a1-1" in running["message"] and "trainer:typo" in running["message"]
    assert c.status["progress"]["summary"] == "starting: ImagePullBackOff"
    assert ("Warning", "ImagePullBackOff") in [(t, r) for t, r, _ in c.events]
    assert plan.requeue_after is not None
    assert plan.requeue_after <= c.settings.startup_timeout_seconds
    c.advance(c.settings.startup_timeout_seconds - 5)
    c.step()
    assert len(c.workers(1)) == 2, "still within startup_timeout_seconds"
    c.advance(6)
    plan = c.step()
    assert sorted(plan.pods_to_delete()) == ["tune-a1-0", "tune-a1-1"], "GPUs released"
    restarting = c.condition("Restarting")
    assert restarting["status"] == "True" and restarting["reason"] == "ImagePullBackOff"
    assert "trainer:typo" in restarting["message"]
    assert c.status["attempts"] == 2, "a failed attempt: backoffLimit bounds the retries"


def test_gang_stuck_creating_containers_is_released_after_the_startup_timeout(
    make_cluster: Any,
) -> None:
    # Volumes that never mount (FailedMount is only an Event): ContainerCreating forever.
    c = make_cluster()
    c.step()
    c.pass_validation()
    c.step()
    for i in range(2):
        c.place(f"tune-a1-{i}", f"gpu-{i}", run=False)
        container_waiting(c, f"tune-a1-{i}", "ContainerCreating")
    c.step()
    assert c.condition("Running")["reason"] == "ContainersStarting"
    c.advance(c.settings.startup_timeout_seconds + 1)
    plan = c.step()
    assert len(plan.pods_to_delete()) == 2
    restarting = c.condition("Restarting")
    assert restarting["reason"] == "StartupTimeout"
    assert "startup_timeout_seconds" in restarting["message"]


# -- suspend / resume --------------------------------------------------------------------------
def test_suspend_and_resume_keep_state(make_cluster: Any) -> None:
    c = make_cluster()
    c.start_running()
    c.graceful_delete = True
    c.job["spec"]["runPolicy"]["suspend"] = True
    c.job["metadata"]["generation"] = 2
    plan = c.step()
    assert c.status["phase"] == "Suspended"
    assert sorted(plan.pods_to_delete()) == ["tune-a1-0", "tune-a1-1"]
    assert c.condition("Suspended")["status"] == "True"
    assert c.status["observedGeneration"] == 2
    c.job["spec"]["runPolicy"]["suspend"] = False
    c.job["metadata"]["generation"] = 3
    plan = c.step()
    assert not plan.pods_to_create(), "old pods still terminating"
    assert c.condition("Restarting")["reason"] == "Resumed"
    c.finish_gone_deletions()
    plan = c.step()
    assert plan.pods_to_create() == ["tune-a1-0", "tune-a1-1"], "same attempt: not a failure"
    assert c.status["attempts"] == 1
    assert c.condition("Suspended")["status"] == "False"


def test_suspended_at_creation_runs_nothing(make_cluster: Any) -> None:
    c = make_cluster(runPolicy={"suspend": True})
    c.step()
    assert c.status["phase"] == "Suspended" and not c.pods


# -- progress and stalls -----------------------------------------------------------------------
def test_progress_is_mirrored_and_stall_restarts(make_cluster: Any) -> None:
    c = make_cluster(runPolicy={"stallTimeoutSeconds": 120})
    c.start_running()
    c.progress = ProgressSample(
        {
            "state": "training",
            "step": 120,
            "totalSteps": 300,
            "epoch": 1.2,
            "loss": 0.8,
            "tokensPerSecond": 9000.0,
            "etaSeconds": 600.4,
        },
        c.now,
        attempt=1,
    )
    c.step()
    progress = c.status["progress"]
    assert progress["summary"] == "120/300 (40%)"
    assert progress["loss"] == 0.8 and progress["etaSeconds"] == 600
    assert progress["lastUpdateTime"]
    c.advance(100)
    c.progress = dataclasses.replace(c.progress, fetched_at=c.now)  # same step, re-read
    c.step()
    assert c.status["phase"] == "Running"
    c.advance(30)
    c.progress = dataclasses.replace(c.progress, fetched_at=c.now)  # still the same step
    c.step()
    assert c.condition("Restarting")["reason"] == "Stalled"


def test_nan_loss_is_not_written(make_cluster: Any) -> None:
    c = make_cluster()
    c.start_running()
    c.progress = ProgressSample({"step": 3, "totalSteps": 10, "loss": float("nan")}, c.now, 1)
    c.step()
    assert "loss" not in c.status["progress"]


# -- deadlines, ttl, warnings, deletion --------------------------------------------------------
def test_active_deadline(make_cluster: Any) -> None:
    c = make_cluster(runPolicy={"activeDeadlineSeconds": 100})
    c.start_running()
    c.advance(101)
    c.step()
    assert c.condition("Failed")["reason"] == "DeadlineExceeded"
    assert not [p for p in c.workers() if p["status"]["phase"] == "Running"]


def test_suspended_time_does_not_count_against_the_deadline(make_cluster: Any) -> None:
    # batch/v1 Job semantics: no deadline while suspended; the clock restarts on resume.
    c = make_cluster(runPolicy={"activeDeadlineSeconds": 100})
    c.start_running()
    c.advance(50)
    c.job["spec"]["runPolicy"]["suspend"] = True
    c.step()
    assert c.status["phase"] == "Suspended"
    c.advance(500)  # suspended far past the original deadline
    c.step()
    assert c.status["phase"] == "Suspended"
    assert c.condition("Failed") is None
    c.job["spec"]["runPolicy"]["suspend"] = False
    resumed_at = c.now
    plan = c.step()
    assert c.condition("Failed") is None, "resuming must not trip the old deadline"
    assert plan.pods_to_create() == ["tune-a1-0", "tune-a1-1"]
    assert c.status["startTime"] == format_time(resumed_at), "the clock restarts on resume"
    c.place_all()
    c.advance(99)
    c.step()
    assert c.status["phase"] == "Running"
    c.advance(2)
    c.step()
    assert c.condition("Failed")["reason"] == "DeadlineExceeded"


def test_ttl_after_finished_deletes_job(make_cluster: Any) -> None:
    c = make_cluster(runPolicy={"ttlSecondsAfterFinished": 60})
    c.start_running()
    c.finish("tune-a1-0", 0)
    c.finish("tune-a1-1", 0)
    c.step()
    plan = c.step()
    assert plan.requeue_after is not None and 55 <= plan.requeue_after <= 60
    c.advance(61)
    plan = c.step()
    assert any(isinstance(a, DeleteJob) for a in plan.actions)


def test_config_warnings_become_condition_and_events_once(make_cluster: Any) -> None:
    c = make_cluster(hyperparameters={"learningRate": 0.5})
    c.step()
    cond = c.condition("ConfigWarning")
    assert cond["status"] == "True" and "learningRate" in cond["message"]
    assert reasons(c).count("ConfigWarning") == 1
    c.step()
    assert reasons(c).count("ConfigWarning") == 1


def test_invalid_spec_fails(make_cluster: Any) -> None:
    c = make_cluster(hyperparameters={"globalBatchSize": 33})
    c.step()
    assert c.status["phase"] == "Failed"
    assert c.condition("Failed")["reason"] == "InvalidSpec"


def test_deleting_job_is_left_to_garbage_collection(make_cluster: Any) -> None:
    c = make_cluster()
    c.start_running()
    c.job["metadata"]["deletionTimestamp"] = "2026-01-01T12:01:00Z"
    plan = c.step()
    assert plan.status is None and not plan.actions


def test_pods_of_an_earlier_job_with_the_same_name_are_removed_first(make_cluster: Any) -> None:
    c = make_cluster()
    c.step()
    c.pass_validation()
    c.step()
    for body in c.workers():
        body["metadata"]["ownerReferences"][0]["uid"] = "old-uid"
    plan = c.step()
    assert sorted(plan.pods_to_delete()) == ["tune-a1-0", "tune-a1-1"]
    assert not plan.pods_to_create()
    plan = c.step()
    assert plan.pods_to_create() == ["tune-a1-0", "tune-a1-1"]


def test_requeue_for_scheduling_timeout(make_cluster: Any) -> None:
    c = make_cluster()
    c.step()
    c.pass_validation()
    plan = c.step()
    assert plan.requeue_after == 60


def test_time_to_running_metric_once(make_cluster: Any) -> None:
    c = make_cluster()
    plan = c.start_running()
    ttr = [m for m in plan.metrics if m.kind == "time_to_running"]
    assert len(ttr) == 1 and ttr[0].value >= 1
    c.advance(timedelta(seconds=5).total_seconds())
    assert not [m for m in c.step().metrics if m.kind == "time_to_running"]


def test_terminal_summary_is_stable(make_cluster: Any) -> None:
    c = make_cluster()
    c.start_running()
    c.finish("tune-a1-0", 0)
    c.finish("tune-a1-1", 0)
    c.step()
    assert c.status["progress"]["summary"] == "done"
    plan = c.step()
    assert plan.status is None
    assert c.status["progress"]["summary"] == "done"


def test_unschedulable_validation_pod_says_why(make_cluster: Any) -> None:
    c = make_cluster()
    c.step()
    name = c.validation_pods()[0]["metadata"]["name"]
    c.unschedulable(name, 'persistentvolumeclaim "data" not found')
    c.step()
    cond = c.condition("Validated")
    assert cond["reason"] == "ValidationPending"
    assert 'persistentvolumeclaim "data" not found' in cond["message"]
    assert c.status["progress"]["summary"] == "validating: pod pending"
