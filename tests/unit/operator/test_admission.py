"""Gang admission without Kueue (issue 9, item 14): no job holds part of a gang while the
rest cannot run. Pure fit checks, and the lifecycle keeping a gang gated until it fits."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from kubetune_operator import naming
from kubetune_operator.admission import Capacity, admit
from kubetune_operator.observed import NodeView, PodView
from kubetune_operator.plan import DeletePod, UngatePod
from tests.unit.operator.conftest import fast_settings

GPU = "nvidia.com/gpu"


def node(name: str, gpus: int = 8, *, ready: bool = True, cordoned: bool = False) -> NodeView:
    return NodeView(
        name,
        ready,
        unschedulable=cordoned,
        allocatable=(
            (GPU, str(gpus)),
            ("cpu", "96"),
            ("memory", "1000Gi"),
            ("ephemeral-storage", "2Ti"),
        ),
    )


def cluster_nodes(count: int = 4) -> dict[str, NodeView]:
    return {f"gpu-{i}": node(f"gpu-{i}") for i in range(count)}


def worker(gpus: int = 8) -> dict[str, Any]:
    amounts = {GPU: str(gpus), "cpu": "8", "memory": "64Gi"}
    return {"spec": {"containers": [{"resources": {"requests": amounts, "limits": amounts}}]}}


def pod(name: str, node_name: str | None = None, *, gated: bool = False, **kw: Any) -> PodView:
    return PodView(
        name=name,
        uid=name,
        job="other",
        role=naming.ROLE_WORKER,
        owner_uid="other-uid",
        node_name=node_name,
        gates=(naming.GANG_GATE,) if gated else (),
        requests=((GPU, Decimal(8)), ("cpu", Decimal(8)), ("memory", Decimal(64 * 2**30))),
        **kw,
    )


def test_capacity_counts_bound_and_released_pods_only() -> None:
    cap = Capacity.of(
        [
            pod("bound", "gpu-0"),
            pod("leaving", "gpu-1", deleting=True),  # still holds its room until gone
            pod("released"),
            pod("gated", gated=True),
            pod("done", "gpu-2", phase="Succeeded"),
        ]
    )
    assert set(cap.used) == {"gpu-0", "gpu-1"}
    assert cap.used["gpu-0"][GPU] == 8
    assert len(cap.pending) == 1


def test_a_gang_fits_only_when_all_of_it_has_room() -> None:
    nodes = cluster_nodes()
    empty = admit(worker(), 3, nodes, Capacity())
    assert empty.fits and empty.room == 3
    # Another job of 3 x 8 GPUs runs: one node is left, the gang of 3 must wait.
    busy = Capacity.of([pod(f"o{i}", f"gpu-{i}") for i in range(3)])
    verdict = admit(worker(), 3, nodes, busy)
    assert not verdict.fits and (verdict.room, verdict.ever) == (1, 3)
    assert verdict.describe().startswith("waiting for room: 1 of 3 pods")
    assert "holds no GPUs" in verdict.describe()
    # Released but unbound pods of another job take their room first.
    released = Capacity.of([pod(f"o{i}") for i in range(2)])
    assert admit(worker(), 2, nodes, released).fits
    assert not admit(worker(), 3, nodes, released).fits
    # Smaller pods share a node.
    assert admit(worker(4), 2, nodes, busy).fits


def test_not_ready_and_cordoned_nodes_give_no_room_but_could_later() -> None:
    nodes = cluster_nodes()
    nodes["gpu-0"] = node("gpu-0", ready=False)
    nodes["gpu-1"] = node("gpu-1", cordoned=True)
    verdict = admit(worker(), 3, nodes, Capacity())
    assert not verdict.fits and (verdict.room, verdict.ever) == (2, 3)


def test_a_gang_larger_than_the_cluster_is_told_apart() -> None:
    verdict = admit(worker(), 5, cluster_nodes(), Capacity())
    assert not verdict.fits and verdict.ever == 4
    assert "can never hold the whole gang" in verdict.describe()


def test_nodes_without_reported_resources_leave_it_to_the_scheduler() -> None:
    nodes = {"n": NodeView("n", True)}
    assert admit(worker(), 3, nodes, Capacity()).fits


# -- the lifecycle ----------------------------------------------------------------------------
def _gpu_nodes(c: Any) -> None:
    c.nodes = cluster_nodes()


def test_the_gang_stays_gated_while_it_does_not_fit(make_cluster: Any) -> None:
    c = make_cluster()  # 2 pods x 8 GPUs
    _gpu_nodes(c)
    c.capacity = Capacity.of([pod(f"o{i}", f"gpu-{i}") for i in range(3)])
    c.step()
    c.pass_validation()
    plan = c.step()
    assert len(c.workers(1)) == 2, "the pods exist (gated: they hold nothing)"
    assert not [a for a in plan.actions if isinstance(a, UngatePod)]
    assert all(w["spec"].get("schedulingGates") for w in c.workers(1))
    admitted = c.condition("Admitted")
    assert (admitted["status"], admitted["reason"]) == ("Unknown", "WaitingForCapacity")
    assert "1 of 2 pods" in admitted["message"]
    assert c.status["progress"]["summary"] == "queued: waiting for room (1/2 fit)"
    assert plan.requeue_after == c.settings.capacity_recheck_seconds
    # Much later: still gated, not released as unschedulable (it holds nothing).
    c.advance(3600)
    plan = c.step()
    assert not plan.pods_to_delete()
    assert c.condition("Admitted")["reason"] == "WaitingForCapacity"
    # The other job finished: the whole gang is released at once.
    c.capacity = Capacity()
    plan = c.step()
    assert sorted(a.name for a in plan.actions if isinstance(a, UngatePod)) == [
        "tune-a1-0",
        "tune-a1-1",
    ]


def test_a_gang_that_never_fits_is_reported_and_released_after_the_timeout(
    make_cluster: Any,
) -> None:
    c = make_cluster(
        resources={"nodes": 5},
        hyperparameters={"globalBatchSize": 80, "microBatchSize": 2},
    )
    _gpu_nodes(c)
    c.capacity = Capacity()
    c.step()
    c.pass_validation()
    c.step()
    admitted = c.condition("Admitted")
    assert admitted["reason"] == "GangNeverFits"
    assert "4 of its 5 pods" in admitted["message"]
    assert ("Warning", "GangNeverFits") in [(t, r) for t, r, _ in c.events]
    c.advance(c.job["spec"]["runPolicy"].get("schedulingTimeoutSeconds", 600) + 1)
    plan = c.step()
    assert sorted(plan.pods_to_delete()) == [f"tune-a1-{i}" for i in range(5)]
    assert c.condition("Admitted")["reason"] == "GangUnschedulable"


def test_a_partially_placed_gang_is_released_after_the_grace(make_cluster: Any) -> None:
    c = make_cluster(fast_settings(partial_gang_grace_seconds=15))
    c.step()
    c.pass_validation()
    c.step()
    c.place("tune-a1-0", "gpu-0", run=False)
    c.unschedulable("tune-a1-1", "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")
    c.pods["tune-a1-1"]["status"]["conditions"][0]["lastTransitionTime"] = c.now.strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    plan = c.step()
    assert not plan.pods_to_delete()
    c.advance(c.settings.partial_gang_grace_seconds + 1)
    plan = c.step()
    assert sorted(plan.pods_to_delete()) == ["tune-a1-0", "tune-a1-1"]
    admitted = c.condition("Admitted")
    assert admitted["reason"] == "GangUnschedulable"
    assert "only part of the gang could be placed (1/2 pods placed)" in admitted["message"]
    assert any(isinstance(a, DeletePod) for a in plan.actions)
    assert timedelta(seconds=c.settings.partial_gang_grace_seconds) < timedelta(
        seconds=c.job["spec"]["runPolicy"].get("schedulingTimeoutSeconds", 600)
    )


def test_other_pods_merges_index_and_own_writes_once() -> None:
    from kubetune_operator.cache import Snapshot

    def body(name: str, job: str, rv: str, node: str | None = None) -> dict[str, Any]:
        return {
            "metadata": {
                "name": name,
                "uid": name,
                "resourceVersion": rv,
                "labels": {naming.LABEL_JOB: job, naming.LABEL_ROLE: naming.ROLE_WORKER},
            },
            "spec": {"nodeName": node} if node else {},
        }

    snap = Snapshot()
    snap.pods = {
        ("ns", "a"): [PodView.from_body(body("a-0", "a", "5", "gpu-0"))],
        ("ns", "b"): [PodView.from_body(body("b-0", "b", "6"))],
    }
    snap.wrote_pod("ns", body("b-0", "b", "9", "gpu-1"))  # we just saw it bound
    snap.wrote_pod("ns", body("c-0", "c", "10"))  # created, not indexed yet
    others = {p.name: p for p in snap.other_pods(("ns", "a"))}
    assert set(others) == {"b-0", "c-0"}, "the asking job's own pods are not counted"
    assert others["b-0"].node_name == "gpu-1", "our newer write wins over the index"
    assert {p.name for p in snap.other_pods(("ns", "b"))} == {"a-0", "c-0"}
