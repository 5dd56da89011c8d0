"""GPU-hour accounting (goodput.py): allocated over attempts, productive with its rollback to
the checkpoint on a restart, idempotence, the ratio -- pure functions, no cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kubetune.api.status import GPUHours
from kubetune_operator.goodput import (
    Holding,
    Sample,
    account,
    goodput,
    held_seconds,
    holdings,
    productive_at,
    seconds_until_spent,
    update_due,
)
from kubetune_operator.observed import PodView

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
H = 3600.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def pod_body(
    uid: str, gpus: int, bound: float | None, finished: float | None = None
) -> dict[str, object]:
    status: dict[str, object] = {"phase": "Pending"}
    spec: dict[str, object] = {
        "containers": [{"name": "trainer", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]
    }
    if bound is not None:
        spec["nodeName"] = "gpu-0"
        status["phase"] = "Running"
        status["conditions"] = [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": fmt(at(bound))}
        ]
    if finished is not None:
        status["phase"] = "Failed"
        status["containerStatuses"] = [
            {
                "name": "trainer",
                "state": {"terminated": {"exitCode": 1, "finishedAt": fmt(at(finished))}},
            }
        ]
    return {
        "metadata": {"name": uid, "uid": uid, "creationTimestamp": fmt(at(0))},
        "spec": spec,
        "status": status,
    }


def fmt(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- allocated ---------------------------------------------------------------------------------
def test_holdings_from_pods_bound_to_terminated() -> None:
    pods = [
        PodView.from_body(pod_body("a", 8, bound=10, finished=70)),  # held 60 s
        PodView.from_body(pod_body("b", 8, bound=20)),  # still holds
        PodView.from_body(pod_body("c", 8, bound=None)),  # never placed: holds nothing
        PodView.from_body(pod_body("d", 0, bound=5)),  # no GPU (a validation pod)
    ]
    holds = holdings(pods, "nvidia.com/gpu")
    assert holds == [Holding(8, at(10), at(70)), Holding(8, at(20), None)]
    assert held_seconds(holds, None, at(100)) == 8 * 60 + 8 * 80
    assert held_seconds(holds, at(50), at(100)) == 8 * 20 + 8 * 50
    assert held_seconds(holds, at(100), at(100)) == 0
    assert holdings(pods, "amd.com/gpu") == []


def test_allocated_sums_over_attempts_and_survives_a_restart_of_the_operator() -> None:
    # Attempt 1: 2 pods x 8 GPUs from t=0 to t=600; attempt 2: from t=700, still running.
    attempt1 = [Holding(8, at(0), at(600)), Holding(8, at(0), at(600))]
    hours = account(None, at(300), attempt1)
    assert hours is not None and hours.allocated == pytest.approx(16 * 300 / H, abs=1e-5)
    hours = account(hours, at(650), attempt1)  # attempt 1 ended at 600
    assert hours is not None and hours.allocated == pytest.approx(16 * 600 / H, abs=1e-5)
    # The old gang's pods are gone: only the new one is visible; the sum carries on from
    # the status, as it does for a freshly started operator.
    attempt2 = [Holding(8, at(700), None), Holding(8, at(700), None)]
    hours = account(GPUHours.model_validate(hours.model_dump()), at(1000), attempt2)
    assert hours is not None
    assert hours.allocated == pytest.approx(16 * (600 + 300) / H, abs=1e-5)
    assert hours.observed_time == at(1000)


def test_repeated_or_stale_reconciles_count_nothing_twice() -> None:
    holds = [Holding(8, at(0), None)]
    once = account(None, at(100), holds)
    assert account(once, at(100), holds) == once, "the same reconcile again adds nothing"
    # A failover to a replica whose clock is 30 s behind: it must not count [70, 100] again.
    assert account(once, at(70), holds) == once
    later = account(once, at(130), holds)
    assert later is not None and later.allocated == pytest.approx(8 * 130 / H, abs=1e-5)


def test_nothing_held_nothing_recorded() -> None:
    assert account(None, at(100), []) is None
    assert account(None, at(100), [Holding(8, at(200), None)]) is None


# -- productive --------------------------------------------------------------------------------
def sample(step: int, t: float, pod: str = "rank0-a", checkpoint: int | None = None) -> Sample:
    return Sample(pod, step, at(t), 16.0, checkpoint)


def run(hours: GPUHours | None, samples: list[Sample], holds: list[Holding]) -> GPUHours | None:
    for s in samples:
        hours = account(hours, s.time, holds, s)
    return hours


def test_productive_counts_intervals_in_which_the_step_advanced() -> None:
    holds = [Holding(16, at(0), None)]
    hours = run(
        None,
        [
            sample(0, 60),  # first sample: loading before it is not productive
            sample(10, 120),  # +60 s
            sample(20, 180),  # +60 s
            sample(20, 240),  # evaluating / saving: the step stands still, not productive
            sample(30, 300),  # +60 s
        ],
        holds,
    )
    assert hours is not None
    assert hours.productive == pytest.approx(16 * 180 / H, abs=1e-5)
    assert hours.allocated == pytest.approx(16 * 300 / H, abs=1e-5)
    assert hours.goodput == pytest.approx(180 / 300, abs=1e-4)
    assert (hours.sample_step, hours.sample_time) == (30, at(300))


def test_a_new_gang_falls_back_to_the_value_at_its_checkpoint() -> None:
    holds = [Holding(16, at(0), at(400))]
    hours = run(
        None,
        [
            sample(0, 0),
            sample(50, 100, checkpoint=50),  # checkpoint at step 50 when productive = 100 s
            sample(100, 200),
            sample(150, 300),  # 300 s productive, then the gang fails
        ],
        holds,
    )
    assert hours is not None
    assert hours.checkpoint_step == 50
    assert hours.productive_at_checkpoint == pytest.approx(16 * 100 / H, abs=1e-5)
    assert hours.productive == pytest.approx(16 * 300 / H, abs=1e-5)
    # Attempt 2 resumes from step 50: steps 50-150 are redone, their time was not kept.
    holds2 = [*holds, Holding(16, at(500), None)]
    resumed = account(hours, at(560), holds2, sample(50, 560, pod="rank0-b"))
    assert resumed is not None
    assert resumed.productive == pytest.approx(16 * 100 / H, abs=1e-5)
    assert resumed.sampled_pod_uid == "rank0-b"
    assert resumed.allocated == pytest.approx(16 * (400 + 60) / H, abs=1e-5)
    assert resumed.goodput == pytest.approx(100 / 460, abs=1e-4)
    # ... and counts on from there.
    on = account(resumed, at(620), holds2, sample(60, 620, pod="rank0-b"))
    assert on is not None and on.productive == pytest.approx(16 * 160 / H, abs=1e-5)
    # Without any checkpoint everything is redone.
    bare = run(None, [sample(0, 0), sample(100, 200)], holds)
    fresh = account(bare, at(560), holds2, sample(0, 560, pod="rank0-b"))
    assert fresh is not None and fresh.productive == 0


def test_a_checkpoint_between_samples_is_valued_by_its_step() -> None:
    holds = [Holding(16, at(0), None)]
    hours = run(None, [sample(0, 0), sample(40, 100), sample(80, 200, checkpoint=60)], holds)
    assert hours is not None
    # Step 60 lies halfway between the samples at steps 40 (100 s) and 80 (200 s).
    assert hours.productive_at_checkpoint == pytest.approx(16 * 150 / H, abs=1e-5)


def test_resuming_after_a_graceful_stop_keeps_the_steps_it_resumes_at() -> None:
    # A suspension (or a spent budget): the trainer checkpoints on SIGTERM at a step the
    # operator never sampled; the new gang reports it on its first sample.
    holds = [Holding(16, at(0), at(300))]
    hours = run(None, [sample(0, 0), sample(50, 100, checkpoint=50), sample(90, 180)], holds)
    resumed = account(hours, at(400), holds, sample(90, 400, pod="rank0-b"))
    assert resumed is not None and hours is not None
    assert resumed.productive == hours.productive, "nothing was redone"


def test_the_same_sample_again_changes_nothing() -> None:
    holds = [Holding(16, at(0), None)]
    hours = run(None, [sample(0, 0), sample(10, 60, checkpoint=10)], holds)
    assert account(hours, at(60), holds, sample(10, 60, checkpoint=10)) == hours
    assert hours is not None and hours.productive <= hours.allocated


def test_productive_at_interpolates_the_kept_history() -> None:
    assert productive_at([], 10) == 0.0
    assert productive_at([(100, 50.0)], 50) == 25.0
    assert productive_at([(100, 50.0), (200, 150.0)], 150) == 100.0
    assert productive_at([(100, 50.0)], 500) == 50.0


def test_goodput_ratio() -> None:
    assert goodput(0.0, 0.0) is None
    assert goodput(2.0, 1.5) == 0.75
    assert goodput(1.0, 1.2) == 1.0


# -- writes and the budget -----------------------------------------------------------------------
def test_sums_are_written_with_other_changes_or_periodically() -> None:
    holds = [Holding(8, at(0), None)]
    first = account(None, at(10), holds)
    assert update_due(None, first, at(10), holds)
    later = account(first, at(20), holds)
    assert not update_due(first, later, at(20), holds), "10 s later: wait"
    assert update_due(first, account(first, at(30), holds), at(30), holds)
    assert not update_due(first, account(first, at(30), holds), at(30), holds, period=60)
    ended = [Holding(8, at(0), at(15))]
    assert update_due(first, account(first, at(20), ended), at(20), ended), "a pod ended"


def test_seconds_until_the_budget_is_spent() -> None:
    hours = GPUHours(allocated=0.5)
    holds = [Holding(8, at(0), None), Holding(8, at(0), None)]
    assert seconds_until_spent(hours, 1.0, holds) == pytest.approx(0.5 * H / 16)
    assert seconds_until_spent(hours, 1.0, holds, 0.5) is None  # already past 50%
    assert seconds_until_spent(hours, 1.0, []) is None
