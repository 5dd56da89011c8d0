"""GPU-hours, goodput and the GPU-hour budget with the operator as a real process against the
real control plane (KWOK plays the kubelets; a thread plays rank 0's progress document)."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

import pytest

from kubetune.devcluster.testing import Cluster, wait_until
from tests.e2e.operator_helpers import (  # noqa: F401  (fixtures)
    Operators,
    ProgressServer,
    condition,
    events,
    job_status,
    ns_fixture,
    operator_fixture,
    operators_fixture,
    patch_job,
    start_running,
    wait_phase,
    worker_pods,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

GPUS_PER_POD = 8  # operator_helpers.manifest: 2 pods x 8 GPUs


class FakeTrainer(threading.Thread):
    """Rank 0's progress: one optimizer step every ``period`` s, a checkpoint every 10."""

    def __init__(self, server: ProgressServer, pod: dict[str, Any], period: float = 0.5):
        super().__init__(daemon=True)
        self.server, self.pod, self.period = server, pod, period
        self.step = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.step += 1
            checkpoint = self.step // 10 * 10
            extra = (
                {
                    "lastCheckpointStep": checkpoint,
                    "lastCheckpointPath": f"s3://results/gpuh/checkpoints/step-{checkpoint}",
                }
                if checkpoint
                else {}
            )
            self.server.serve(self.pod, step=self.step, totalSteps=100000, **extra)
            self.halt.wait(self.period)

    def __enter__(self) -> FakeTrainer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self.join(timeout=5)


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def expected_allocated(pods: list[dict[str, Any]], until: datetime) -> float:
    """GPU-hours the running pods held from being bound until ``until``."""
    total = 0.0
    for pod in pods:
        bound = next(
            c["lastTransitionTime"]
            for c in pod["status"]["conditions"]
            if c["type"] == "PodScheduled" and c["status"] == "True"
        )
        total += GPUS_PER_POD * (until - when(bound)).total_seconds()
    return total / 3600


def wide_columns(cluster: Cluster, namespace: str, name: str) -> dict[str, str]:
    """``kubectl get ftj -o wide`` (the real kubectl) as {column: value}, sliced by the header's
    offsets (values such as the progress summary contain spaces)."""
    out = cluster.kubectl("get", "ftj", name, "-o", "wide", namespace=namespace).stdout
    header, row = out.splitlines()[:2]
    print(out)
    names = header.split()
    starts = [header.index(n) for n in names]
    ends = [*starts[1:], None]
    return {n: row[s:e].strip() for n, s, e in zip(names, starts, ends, strict=True)}


def test_gpu_hours_goodput_and_a_budget(cluster: Cluster, ns: str, operator: Operators) -> None:
    started = time.monotonic()
    start_running(cluster, ns, "gpuh")
    pods = worker_pods(cluster, ns, "gpuh", attempt=1)
    with FakeTrainer(operator.progress, pods[0]):
        # status.gpuHours grows while the gang runs, and the steps make it productive.
        first = wait_until(
            lambda: (
                (h := job_status(cluster, ns, "gpuh").get("gpuHours", {})).get("productive") and h
            ),
            timeout=30,
            what="productive GPU-hours",
        )
        later = wait_until(
            lambda: (
                (h := job_status(cluster, ns, "gpuh")["gpuHours"])["allocated"]
                > first["allocated"] + 16 * 2 / 3600
                and h
            ),
            timeout=30,
            what="allocated GPU-hours to grow",
        )
        assert later["productive"] > first["productive"]
        assert 0 < later["goodput"] <= 1
        assert later["goodput"] == pytest.approx(later["productive"] / later["allocated"], 1e-3)
        # Exactly the GPUs x the time the pods were bound so far: nothing counted twice.
        assert later["allocated"] == pytest.approx(
            expected_allocated(pods, when(later["observedTime"])), abs=2e-4
        )
        columns = wide_columns(cluster, ns, "gpuh")
        assert float(columns["GPU-HOURS"]) > 0
        assert 0 < float(columns["GOODPUT"]) <= 1
        assert columns["BUDGET"] in ("", "<none>")

        # A failover: the new leader carries the sums on from the status.
        operator.leader.kill()
        operator.spawn().wait_ready()
        after = wait_until(
            lambda: (
                (h := job_status(cluster, ns, "gpuh")["gpuHours"])["observedTime"]
                > later["observedTime"]
                and h["productive"] > later["productive"]
                and h
            ),
            timeout=40,
            what="GPU-hours counted by the new leader",
        )
        assert after["allocated"] == pytest.approx(
            expected_allocated(pods, when(after["observedTime"])), abs=2e-4
        ), "the operator's downtime is counted once, the time before it not again"

        # A tiny budget: a few more seconds of the gang (under 85% spent now, so the 90%
        # warning comes first). The job stops with the reason.
        budget = round(max(after["allocated"] / 0.85, after["allocated"] + 16 * 6 / 3600), 6)
        patch_job(cluster, ns, "gpuh", {"spec": {"runPolicy": {"gpuHourBudget": budget}}})
        status = wait_phase(cluster, ns, "gpuh", "Suspended", timeout=40)
    suspended = condition(status, "Suspended")
    assert suspended["status"] == "True"
    assert suspended["reason"] == "GPUHourBudgetExhausted"
    assert f"of {budget:g} GPU-hours used" in suspended["message"]
    assert "checkpoint at step" in suspended["message"]
    assert status["gpuHours"]["allocated"] >= budget
    wait_until(lambda: not worker_pods(cluster, ns, "gpuh"), timeout=30, what="the gang to stop")
    reasons = {(e["type"], e["reason"]) for e in events(cluster, ns, "gpuh")}
    assert ("Warning", "GPUHourBudgetExhausted") in reasons
    assert ("Warning", "GPUHourBudgetNearlySpent") in reasons
    assert wide_columns(cluster, ns, "gpuh")["BUDGET"] == f"{budget:g}"
    assert "budget exhausted at" in wide_columns(cluster, ns, "gpuh")["PROGRESS"]

    # Raising the budget resumes the job from its checkpoint (same attempt: not a failure).
    patch_job(cluster, ns, "gpuh", {"spec": {"runPolicy": {"gpuHourBudget": 100}}})
    status = wait_phase(cluster, ns, "gpuh", "Running", timeout=40)
    assert condition(status, "Suspended")["reason"] == "Resumed"
    assert status["attempts"] == 1
    assert status["gpuHours"]["allocated"] >= budget
    print(f"goodput e2e: {time.monotonic() - started:.1f}s, final {status['gpuHours']}")
