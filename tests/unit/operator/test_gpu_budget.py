"""status.gpuHours and spec.runPolicy.gpuHourBudget through the state machine (lifecycle.py),
driven on the in-memory cluster of conftest.py."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune_operator.observed import ProgressSample
from kubetune_operator.plan import DeletePod

GPUS = 16  # the conftest job: 2 pods x 8 GPUs
H = 3600.0


def train(c: Any, step: int, checkpoint: int | None = None) -> None:
    """Rank 0 reports ``step`` now (fetched by the poller at the cluster's clock)."""
    doc: dict[str, Any] = {"state": "training", "step": step, "totalSteps": 1000}
    if checkpoint is not None:
        doc["lastCheckpointStep"] = checkpoint
        doc["lastCheckpointPath"] = f"/mnt/pvc/ckpt/tune/checkpoints/step-{checkpoint}"
    c.progress = ProgressSample(doc, c.now, attempt=c.status.get("attempts", 1))


def hours(c: Any) -> dict[str, Any]:
    return dict(c.status.get("gpuHours") or {})


def test_gpu_hours_grow_while_the_gang_holds_its_gpus(make_cluster: Any) -> None:
    c = make_cluster()
    c.step()
    assert "gpuHours" not in c.status, "validation holds no GPU"
    c.start_running()
    c.advance(60)
    train(c, 0)
    c.step()
    assert hours(c)["allocated"] == pytest.approx(GPUS * 60 / H, abs=1e-5)
    assert hours(c)["productive"] == 0, "start-up and loading are not productive"
    c.advance(30)
    train(c, 100)
    c.step()
    got = hours(c)
    assert got["allocated"] == pytest.approx(GPUS * 90 / H, abs=1e-5)
    assert got["productive"] == pytest.approx(GPUS * 30 / H, abs=1e-5)
    assert got["goodput"] == pytest.approx(30 / 90, abs=1e-4)
    # The same reconcile again (a duplicate watch event, a requeue): nothing more.
    assert c.step().status is None
    assert hours(c) == got


def test_a_restart_throws_away_the_steps_after_the_checkpoint(make_cluster: Any) -> None:
    c = make_cluster()
    c.start_running()
    train(c, 0)
    c.step()
    c.advance(100)
    train(c, 50, checkpoint=50)
    c.step()
    c.advance(100)
    train(c, 100, checkpoint=50)
    c.step()
    assert hours(c)["productive"] == pytest.approx(GPUS * 200 / H, abs=1e-5)
    assert hours(c)["productiveAtCheckpoint"] == pytest.approx(GPUS * 100 / H, abs=1e-5)
    c.finish("tune-a1-1", 75, message="NCCL watchdog timeout")  # retryable
    c.step()
    assert c.status["attempts"] == 2
    for _ in range(4):
        c.advance(10)
        c.step()
    c.place_all(attempt=2)
    c.step()
    assert c.status["phase"] == "Running"
    train(c, 50)  # attempt 2 resumed from the checkpoint at step 50
    c.step()
    assert hours(c)["productive"] == pytest.approx(GPUS * 100 / H, abs=1e-5)
    assert hours(c)["goodput"] < 0.5


def start_with_budget(make_cluster: Any, budget: float) -> Any:
    c = make_cluster(runPolicy={"gpuHourBudget": budget})
    c.start_running()
    c.graceful_delete = True
    train(c, 10, checkpoint=10)
    c.step()
    return c


def test_a_spent_budget_suspends_the_job_gracefully(make_cluster: Any) -> None:
    budget = GPUS * 100 / H  # 100 s of the whole gang
    c = start_with_budget(make_cluster, budget)
    c.advance(60)
    plan = c.step()
    assert c.status["phase"] == "Running"
    assert plan.requeue_after is not None and plan.requeue_after <= 30, "look again at 90%"
    c.advance(31)
    c.step()
    warned = [m for _, r, m in c.events if r == "GPUHourBudgetNearlySpent"]
    assert len(warned) == 1 and "91%" in warned[0]
    c.advance(5)
    c.step()
    assert len([r for _, r, _ in c.events if r == "GPUHourBudgetNearlySpent"]) == 1, "once"
    c.advance(5)
    plan = c.step()
    assert c.status["phase"] == "Suspended"
    suspended = c.condition("Suspended")
    assert suspended["status"] == "True" and suspended["reason"] == "GPUHourBudgetExhausted"
    assert "0.4489 of 0.444444 GPU-hours used" in suspended["message"]
    assert "checkpoint at step 10" in suspended["message"]
    deletes = [a for a in plan.actions if isinstance(a, DeletePod)]
    assert sorted(a.name for a in deletes) == ["tune-a1-0", "tune-a1-1"]
    assert not any(a.force for a in deletes), "graceful: the trainer checkpoints on SIGTERM"
    assert ("Warning", "GPUHourBudgetExhausted") in [(t, r) for t, r, _ in c.events]
    assert c.status["progress"]["summary"] == "budget exhausted at 10/1000"
    # The pods still hold their GPUs while they stop: that time counts too.
    c.advance(5)
    c.step()
    c.finish_gone_deletions()
    c.step()
    used = hours(c)["allocated"]
    assert used == pytest.approx(GPUS * 106 / H, abs=1e-5)
    assert c.status["phase"] == "Suspended"
    assert [r for _, r, _ in c.events].count("GPUHourBudgetExhausted") == 1

    # Raising the budget resumes the job (same attempt: not a failure).
    c.job["spec"]["runPolicy"]["gpuHourBudget"] = 1.0
    c.job["metadata"]["generation"] = 2
    plan = c.step()
    assert c.condition("Suspended")["status"] == "False"
    assert c.condition("Suspended")["reason"] == "Resumed"
    assert "raised to 1 GPU-hours" in c.condition("Suspended")["message"]
    c.settle()
    assert sorted(p["metadata"]["name"] for p in c.workers()) == ["tune-a1-0", "tune-a1-1"]
    assert c.status["attempts"] == 1


def test_removing_the_budget_resumes_too(make_cluster: Any) -> None:
    c = start_with_budget(make_cluster, GPUS * 10 / H)
    c.advance(20)
    c.step()
    assert c.condition("Suspended")["reason"] == "GPUHourBudgetExhausted"
    c.finish_gone_deletions()
    del c.job["spec"]["runPolicy"]["gpuHourBudget"]
    c.step()
    assert c.condition("Suspended")["message"] == "spec.runPolicy.gpuHourBudget removed"
    c.settle()
    assert c.workers(), "the gang is back"


def test_suspend_wins_over_a_spent_budget_and_the_budget_over_resuming(
    make_cluster: Any,
) -> None:
    c = start_with_budget(make_cluster, GPUS * 10 / H)
    c.job["spec"]["runPolicy"]["suspend"] = True
    c.advance(20)
    c.step()
    assert c.condition("Suspended")["reason"] == "Suspended"
    c.finish_gone_deletions()
    c.job["spec"]["runPolicy"]["suspend"] = False
    c.step()
    assert c.condition("Suspended")["reason"] == "GPUHourBudgetExhausted"
    assert not c.workers(), "still over budget: no gang"
