"""Kueue integration (issue 12): a Workload per FineTuneJob, no pod until it is admitted, the
flavor's placement on the pods, eviction -> checkpoint, release and requeue, completion."""

from __future__ import annotations

from typing import Any

from kubetune_operator import naming, queueing
from kubetune_operator.plan import (
    DeleteWorkload,
    EnsureWorkload,
    FinishWorkload,
    ReleaseWorkload,
)
from kubetune_operator.queueing import FlavorView
from tests.unit.operator.conftest import FakeCluster, job_manifest

QUEUE = {"queueName": "team-a"}


def queued_cluster(**spec: Any) -> FakeCluster:
    c = FakeCluster(job_manifest(runPolicy=QUEUE, **spec))
    c.kueue = True
    c.flavors["gpu"] = FlavorView(
        "gpu",
        node_labels=(("gpu.example.com/pool", "a100"),),
        tolerations=('{"effect": "NoSchedule", "key": "gpu-pool", "operator": "Exists"}',),
    )
    c.step()
    c.pass_validation()
    return c


def test_a_queued_job_has_a_workload_and_no_pod_until_admitted() -> None:
    c = queued_cluster()
    plan = c.step()
    (ensure,) = [a for a in plan.actions if isinstance(a, EnsureWorkload)]
    spec = ensure.body["spec"]
    assert spec["queueName"] == "team-a"
    (pod_set,) = spec["podSets"]
    assert pod_set["count"] == 2
    requests = pod_set["template"]["spec"]["containers"][0]["resources"]["requests"]
    assert requests["nvidia.com/gpu"] == "8"
    assert "ephemeral-storage" not in requests, "scratch space is not a queued resource"
    owner = ensure.body["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "FineTuneJob" and owner["controller"] is True
    assert c.workers() == [], "no pod while the Workload waits"
    c.pend_workload(
        "couldn't assign flavors to pod set workers: insufficient unused quota for "
        "nvidia.com/gpu in flavor gpu, 8 more needed"
    )
    for _ in range(5):
        c.advance(600)
        c.step()
    assert c.workers() == [], "an hour in the queue creates nothing and fails nothing"
    assert c.status["phase"] == "Queued"
    admitted = c.condition("Admitted")
    assert admitted is not None and admitted["reason"] == "WaitingForQueue"
    assert "insufficient unused quota for nvidia.com/gpu" in admitted["message"]
    assert c.status["progress"]["summary"].startswith("queued in team-a: couldn't assign")


def test_admission_creates_the_gang_with_the_flavors_placement() -> None:
    c = queued_cluster(resources={"nodeSelector": {"zone": "a"}})
    c.step()
    c.admit_workload("gpu")
    c.step()
    workers = c.workers(1)
    assert len(workers) == 2
    for pod in workers:
        spec = pod["spec"]
        assert spec["nodeSelector"] == {"gpu.example.com/pool": "a100", "zone": "a"}
        assert {"effect": "NoSchedule", "key": "gpu-pool", "operator": "Exists"} in spec[
            "tolerations"
        ]
        assert not spec.get("schedulingGates"), "Kueue admitted the whole gang: released"
        assert naming.KUEUE_QUEUE_LABEL not in pod["metadata"]["labels"], (
            "no pod-group label: Kueue's pod integration must not queue the pods again"
        )
    c.place_all()
    c.step()
    assert c.status["phase"] == "Running"


def test_an_unknown_flavor_holds_the_gang_back() -> None:
    c = queued_cluster()
    c.step()
    c.admit_workload("h100")  # not in c.flavors
    c.step()
    assert c.workers() == []
    assert c.condition("Admitted")["reason"] == "WaitingForFlavor"  # type: ignore[index]


def test_preemption_stops_the_gang_releases_the_quota_and_resumes_the_same_attempt() -> None:
    c = queued_cluster()
    c.step()
    c.admit_workload()
    c.step()
    c.place_all()
    c.step()
    assert c.status["phase"] == "Running"
    c.graceful_delete = True
    c.evict_workload("Preempted")
    plan = c.step()
    assert sorted(plan.pods_to_delete()) == ["tune-a1-0", "tune-a1-1"], "SIGTERM: checkpoint"
    assert not [a for a in plan.actions if isinstance(a, ReleaseWorkload)], (
        "the quota is released only once the pods are gone"
    )
    assert c.status["phase"] == "Queued"
    admitted = c.condition("Admitted")
    assert admitted is not None and admitted["reason"] == "Preempted"
    assert ("Warning", "Preempted") in [(t, r) for t, r, _ in c.events]
    assert c.status["attempts"] == 1, "a preemption is not a failed attempt"
    assert c.condition("Failed") is None
    for pod in c.workers():  # the trainer checkpointed on SIGTERM and exited
        c.finish(pod["metadata"]["name"], 143)
    c.finish_gone_deletions()
    plan = c.step()
    (release,) = [a for a in plan.actions if isinstance(a, ReleaseWorkload)]
    assert release.requeue is True and release.reason == "Preempted"
    assert "admission" not in c.workload()["status"]
    c.step()
    assert c.workers() == [], "back in the queue: no pod"
    c.admit_workload()
    c.step()
    assert [p["metadata"]["name"] for p in c.workers()] == ["tune-a1-0", "tune-a1-1"]
    assert c.status["attempts"] == 1


def test_completion_finishes_the_workload() -> None:
    c = queued_cluster()
    c.step()
    c.admit_workload()
    c.step()
    c.place_all()
    c.step()
    for pod in c.workers():
        c.finish(pod["metadata"]["name"], 0)
    c.step()
    assert c.status["phase"] == "Succeeded"
    plan = c.step()
    (finish,) = [a for a in plan.actions if isinstance(a, FinishWorkload)]
    assert finish.succeeded is True
    finished = [cond for cond in c.workload()["status"]["conditions"] if cond["type"] == "Finished"]
    assert finished and finished[0]["status"] == "True"
    assert not [a for a in c.step().actions if isinstance(a, FinishWorkload)], "once"


def test_suspending_gives_the_quota_back() -> None:
    c = queued_cluster()
    c.step()
    c.admit_workload()
    c.step()
    assert c.job is not None
    c.job["spec"]["runPolicy"]["suspend"] = True
    plan = c.step()
    assert [a for a in plan.actions if isinstance(a, DeleteWorkload)]
    assert c.workloads == {}
    c.job["spec"]["runPolicy"]["suspend"] = False
    c.finish_gone_deletions()
    c.step()
    c.step()
    assert len(c.workloads) == 1, "resuming queues a new Workload"
    assert c.workers() == []


def test_without_kueue_a_queued_job_says_so_and_creates_nothing() -> None:
    c = queued_cluster()
    c.kueue = False
    c.step()
    assert c.workers() == [] and c.workloads == {}
    admitted = c.condition("Admitted")
    assert admitted is not None and admitted["reason"] == "KueueUnavailable"
    assert "install Kueue" in admitted["message"]
    assert ("Warning", "KueueUnavailable") in [(t, r) for t, r, _ in c.events]


def test_workload_name_follows_the_gang_shape() -> None:
    from kubetune.api import FineTuneJob
    from kubetune_operator.render import render_worker_pod
    from tests.unit.operator.conftest import fast_settings

    settings = fast_settings()

    def workload(**spec: Any) -> dict[str, Any]:
        job = FineTuneJob.model_validate(job_manifest(runPolicy=QUEUE, **spec))
        return queueing.render_workload(job, render_worker_pod(job, 1, 0, settings))

    base = workload()
    assert base["metadata"]["name"] == workload()["metadata"]["name"], "deterministic"
    bigger = workload(resources={"nodes": 4})
    assert bigger["metadata"]["name"] != base["metadata"]["name"]
    prio = workload(resources={"priorityClassName": "research-high"})
    assert prio["spec"]["priorityClassRef"] == {
        "group": "scheduling.k8s.io",
        "kind": "PriorityClass",
        "name": "research-high",
    }
    # hyperparameters are not part of the reservation
    other = workload(hyperparameters={"learningRate": 1e-4})
    assert other["metadata"]["name"] == base["metadata"]["name"]


def test_kueue_detection_waits_for_the_api_server_instead_of_guessing() -> None:
    import asyncio

    from kubetune_operator.kube import ApiError
    from kubetune_operator.runner import kueue_served
    from tests.unit.operator.conftest import fast_settings

    class Api:
        def __init__(self, *answers: Any) -> None:
            self.answers = list(answers)
            self.calls = 0

        async def get(self, path: str) -> dict[str, Any]:
            assert path == "/apis/kueue.x-k8s.io/v1beta2"
            self.calls += 1
            answer = self.answers.pop(0)
            if isinstance(answer, BaseException):
                raise answer
            return dict(answer)

    served = {"resources": [{"name": "workloads"}, {"name": "resourceflavors"}]}
    settings = fast_settings()

    async def ask(api: Api, stop: asyncio.Event | None = None) -> bool | None:
        return await kueue_served(api, settings, stop or asyncio.Event())  # type: ignore[arg-type]

    unreachable = Api(ConnectionRefusedError("127.0.0.1:9"), served)
    assert asyncio.run(ask(unreachable)) is True, "an unreachable API is asked again"
    assert unreachable.calls == 2
    assert asyncio.run(ask(Api(ApiError(404, "NotFound", "not found")))) is False

    async def stopped() -> bool | None:
        stop = asyncio.Event()
        api = Api(OSError("down"), OSError("down"), OSError("down"))
        task = asyncio.create_task(ask(api, stop))
        await asyncio.sleep(0.1)
        stop.set()
        return await task

    assert asyncio.run(stopped()) is None
    forced = fast_settings(kueue="disabled")
    assert asyncio.run(kueue_served(Api(), forced, asyncio.Event())) is False  # type: ignore[arg-type]
