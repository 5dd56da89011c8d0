"""The operator's metrics beyond the contract's names: GPU-time deltas and per-job series,
jobs by namespace, and where the controller and ``decide`` emit the new series."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kubetune_operator.controller import Controller
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.observed import ProgressSample
from kubetune_operator.plan import MetricEvent
from kubetune_operator.settings import OperatorSettings

Sample = tuple[str, tuple[tuple[str, str], ...]]


def samples(m: OperatorMetrics) -> dict[Sample, float]:
    text = generate_latest(m.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def gpu(kind: str, namespace: str = "ns", queue: str = "q") -> Sample:
    return (f"kubetune_gpu_{kind}_seconds_total", (("namespace", namespace), ("queue", queue)))


def job(kind: str, name: str = "j", namespace: str = "ns") -> Sample:
    return (f"kubetune_job_gpu_{kind}_seconds", (("finetunejob", name), ("namespace", namespace)))


# -- record_gpu_time / forget_job --------------------------------------------------------------
def test_a_job_created_after_the_operator_started_is_counted_from_zero() -> None:
    # Under load the first status write may already carry GPU time (writes are coalesced):
    # for a job born after this process started none of it was counted before.
    m = OperatorMetrics()
    m.record_gpu_time("ns", "q", "new", 100.0, 60.0, None, counted_from_zero=True)
    s = samples(m)
    assert s[gpu("allocated")] == 100.0 and s[gpu("productive")] == 60.0
    m.record_gpu_time("ns", "q", "new", 130.0, 70.0, None, counted_from_zero=True)
    s = samples(m)
    assert s[gpu("allocated")] == 130.0 and s[gpu("productive")] == 70.0, "growth only"


def test_gpu_time_counts_the_growth_of_cumulative_totals() -> None:
    m = OperatorMetrics()
    # First report: the baseline (a new leader must not add every job's history at once).
    m.record_gpu_time("ns", "q", "j", 100.0, 60.0, 3600.0)
    s = samples(m)
    assert s.get(gpu("allocated"), 0.0) == 0.0 and s.get(gpu("productive"), 0.0) == 0.0
    assert s[job("allocated")] == 100.0 and s[job("productive")] == 60.0
    assert s[job("budget")] == 3600.0

    m.record_gpu_time("ns", "q", "j", 160.0, 100.0, 3600.0)
    m.record_gpu_time("ns", "q", "j", 160.0, 100.0, 3600.0)  # a repeat adds nothing
    m.record_gpu_time("ns", "q", "k", 50.0, 0.0, None)  # another job: its own baseline
    m.record_gpu_time("ns", "q", "k", 80.0, 20.0, None)
    s = samples(m)
    assert s[gpu("allocated")] == 60.0 + 30.0
    assert s[gpu("productive")] == 40.0 + 20.0
    assert s[job("allocated")] == 160.0 and s[job("allocated", "k")] == 80.0
    assert job("budget", "k") not in s, "no budget, no series"

    # Productive time rolled back to the checkpoint (a gang restart): the redone steps
    # are not counted again; only growth above the highest total so far counts.
    m.record_gpu_time("ns", "q", "j", 170.0, 80.0, 3600.0)
    assert samples(m)[gpu("productive")] == 60.0
    assert samples(m)[job("productive")] == 80.0, "the per-job gauge shows the kept work"
    m.record_gpu_time("ns", "q", "j", 190.0, 110.0, 3600.0)
    assert samples(m)[gpu("productive")] == 60.0 + 10.0

    # An allocated total that went down (status reset) counts from zero, like a counter reset.
    m.record_gpu_time("ns", "q", "j", 10.0, 5.0, 3600.0)
    s = samples(m)
    assert s[gpu("allocated")] == 120.0 + 10.0 and s[gpu("productive")] == 70.0
    # Another queue for the same namespace is its own series.
    m.record_gpu_time("ns", "other", "j", 20.0, 5.0, 3600.0)
    assert samples(m)[gpu("allocated", queue="other")] == 10.0


def test_budget_series_goes_when_the_budget_is_removed() -> None:
    m = OperatorMetrics()
    m.record_gpu_time("ns", "", "j", 1.0, 1.0, 7200.0)
    assert samples(m)[job("budget")] == 7200.0
    m.record_gpu_time("ns", "", "j", 2.0, 1.0, None)
    assert job("budget") not in samples(m)


def test_forget_job_removes_its_series_and_keeps_the_counters() -> None:
    m = OperatorMetrics()
    m.record_gpu_time("ns", "q", "j", 10.0, 5.0, 100.0)
    m.record_gpu_time("ns", "q", "j", 30.0, 15.0, 100.0)
    m.record_gpu_time("ns", "q", "keep", 1.0, 1.0, 100.0)
    m.forget_job("ns", "j")
    m.forget_job("ns", "never-seen")  # harmless
    s = samples(m)
    assert not any(key[0].startswith("kubetune_job_gpu_") and job_label(key) == "j" for key in s)
    assert s[job("allocated", "keep")] == 1.0
    assert s[gpu("allocated")] == 20.0 and s[gpu("productive")] == 10.0
    # Reported again (a job recreated under the name): a fresh baseline, no double count.
    m.record_gpu_time("ns", "q", "j", 5.0, 0.0, None)
    assert samples(m)[gpu("allocated")] == 20.0


def job_label(key: Sample) -> str | None:
    return dict(key[1]).get("finetunejob")


# -- jobs by namespace, restarts by namespace ---------------------------------------------------
def test_jobs_by_namespace_and_phase_with_zeros() -> None:
    m = OperatorMetrics()
    m.watch_jobs(lambda: [("a", "Running"), ("a", "Running"), ("b", "Queued")])
    s = samples(m)
    assert s[("kubetune_jobs", (("namespace", "a"), ("phase", "Running")))] == 2
    assert s[("kubetune_jobs", (("namespace", "a"), ("phase", "Queued")))] == 0
    assert s[("kubetune_jobs", (("namespace", "b"), ("phase", "Queued")))] == 1
    assert not any(dict(k[1]).get("namespace") == "c" for k in s)


def test_record_puts_restarts_under_the_jobs_namespace() -> None:
    m = OperatorMetrics()
    m.record([MetricEvent("restart", "NodeLost")], namespace="team")
    m.record([MetricEvent("scheduling_latency", value=4.0)], namespace="team")
    m.record([MetricEvent("time_to_first_step", value=30.0)], namespace="team")
    s = samples(m)
    assert s[("kubetune_job_restarts_total", (("namespace", "team"), ("reason", "NodeLost")))] == 1
    assert s[("kubetune_job_scheduling_latency_seconds_sum", ())] == 4.0
    assert s[("kubetune_job_time_to_first_step_seconds_count", ())] == 1


# -- the controller ------------------------------------------------------------------------------
def controller() -> Controller:
    settings = OperatorSettings(leader_election=False, identity="t")
    return Controller(object(), settings, OperatorMetrics())  # type: ignore[arg-type]


def test_failed_reconciles_are_counted() -> None:
    async def scenario() -> None:
        c = controller()

        async def broken(key: Any) -> None:
            raise RuntimeError("boom")

        c.reconcile = broken  # type: ignore[method-assign]
        c.queue.add(("ns", "j"))
        worker = asyncio.create_task(c._worker())
        for _ in range(100):
            if c.metrics.reconcile_errors._value.get() >= 1:
                break
            await asyncio.sleep(0.01)
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        assert samples(c.metrics)[("kubetune_reconcile_errors_total", ())] == 1

    asyncio.run(scenario())


def test_reconciles_report_status_gpu_hours_by_namespace_and_queue() -> None:
    """The controller feeds each job's status.gpuHours (what the status holds, after the
    reconcile's write) to the GPU-time series; the progress poller counts nothing itself
    (it would count the same GPU time twice)."""

    async def scenario() -> None:
        c = controller()

        def put(name: str, allocated_h: float, productive_h: float, **where: Any) -> None:
            labels = {"kueue.x-k8s.io/queue-name": where["label"]} if "label" in where else {}
            policy = {"queueName": where["spec"]} if "spec" in where else {}
            c.cache.jobs[("ns", name)] = [
                {
                    "metadata": {"name": name, "namespace": "ns", "uid": name, "labels": labels},
                    "spec": {"runPolicy": {**policy, "gpuHourBudget": 2.0}},
                    "status": {
                        "phase": "Running",
                        "gpus": 8,
                        "gpuHours": {"allocated": allocated_h, "productive": productive_h},
                    },
                }
            ]

        put("a", 1.0, 0.5, label="gpu-queue")
        put("b", 1.0, 0.5, spec="from-spec")
        put("c", 1.0, 0.5)
        for name in "abc":
            c._record_job_series(("ns", name))  # baselines
        put("a", 1.5, 0.75, label="gpu-queue")
        put("b", 1.25, 0.5, spec="from-spec")
        put("c", 2.0, 1.0)
        for name in "abc":
            c._record_job_series(("ns", name))
        await c.poll_once()
        s = samples(c.metrics)
        assert s[gpu("allocated", queue="gpu-queue")] == 0.5 * 3600
        assert s[gpu("productive", queue="gpu-queue")] == 0.25 * 3600
        assert s[gpu("allocated", queue="from-spec")] == 0.25 * 3600
        assert s[gpu("allocated", queue="")] == 1.0 * 3600
        assert s[job("allocated", "a")] == 1.5 * 3600
        assert s[job("budget", "a")] == 2.0 * 3600

    asyncio.run(scenario())


def test_deleted_job_forgets_its_gpu_series() -> None:
    c = controller()
    c.metrics.record_gpu_time("ns", "", "j", 10.0, 5.0, None)
    c.job_event("DELETED", ("ns", "j"))
    assert job("allocated") not in samples(c.metrics)


# -- decide: scheduling latency and time to first step -----------------------------------------
def events(plan: Any, kind: str) -> list[float]:
    return [m.value for m in plan.metrics if m.kind == kind]


def progress(c: Any, step: int, attempt: int = 1, **doc: Any) -> None:
    document = {"state": "training", "step": step, "totalSteps": 200, **doc}
    c.progress = ProgressSample(document, c.now, attempt=attempt)


def test_scheduling_latency_once_per_attempt(make_cluster: Any) -> None:
    c = make_cluster()
    c.step()
    c.pass_validation()
    c.step()  # the gang is created now
    c.advance(7)
    c.place_all()
    plan = c.step()
    assert c.status["phase"] == "Running"
    assert events(plan, "scheduling_latency") == [7.0]
    c.advance(5)
    assert events(c.step(), "scheduling_latency") == []


def test_time_to_first_step_once_per_attempt_past_the_resume_point(make_cluster: Any) -> None:
    c = make_cluster()
    c.start_running()
    c.advance(20)
    progress(c, 0, state="loading")
    assert events(c.step(), "time_to_first_step") == []
    c.advance(10)
    progress(c, 1)
    assert events(c.step(), "time_to_first_step") == [30.0]
    c.advance(10)
    progress(c, 40, lastCheckpointStep=40, lastCheckpointPath="/ckpt/step-40")
    assert events(c.step(), "time_to_first_step") == []
    c.advance(10)
    progress(c, 45)
    assert events(c.step(), "time_to_first_step") == []

    # Attempt 2 resumes at step 40: reporting step 40 is not a step of its own.
    c.finish("tune-a1-1", 75, message="NCCL watchdog timeout")
    c.step()
    c.advance(10)
    c.step()  # backoff over: attempt 2's gang
    c.place_all(2)
    c.step()
    assert c.status["phase"] == "Running" and c.status["attempts"] == 2
    c.advance(15)
    progress(c, 40, attempt=2)
    assert events(c.step(), "time_to_first_step") == []
    c.advance(5)
    progress(c, 41, attempt=2)
    assert events(c.step(), "time_to_first_step") == [20.0]
    c.advance(5)
    progress(c, 42, attempt=2)
    assert events(c.step(), "time_to_first_step") == []


def exposition(m: OperatorMetrics) -> str:
    return generate_latest(m.registry).decode()


def test_attempts_per_job_exist_from_the_first_attempt_and_go_with_the_job() -> None:
    m = OperatorMetrics()
    m.record_attempts("ns", "j", 0)  # not started: no series yet
    assert 'kubetune_job_attempts{finetunejob="j",namespace="ns"}' not in exposition(m)
    m.record_attempts("ns", "j", 1)
    m.record_attempts("ns", "j", 3)
    assert 'kubetune_job_attempts{finetunejob="j",namespace="ns"} 3.0' in exposition(m)
    m.forget_job("ns", "j")
    assert "kubetune_job_attempts{" not in exposition(m)


def test_labelled_counters_start_at_zero_so_the_first_event_shows_in_increase() -> None:
    """A counter series that first appears at 1 is invisible to increase()/rate(): failure
    and scrape-failure reasons exist from the start, a namespace's restart reasons from its
    first reconcile."""
    m = OperatorMetrics()
    text = exposition(m)
    assert 'kubetune_job_failures_total{reason="InvalidData"} 0.0' in text
    assert 'kubetune_job_failures_total{reason="BackoffLimitExceeded"} 0.0' in text
    assert 'kubetune_progress_scrape_failures_total{reason="unreachable"} 0.0' in text
    assert 'kubetune_job_restarts_total{namespace="team-a"' not in text
    m.record([], namespace="team-a")
    text = exposition(m)
    for reason in ("NodeLost", "OOMKilled", "Stalled", "Interrupted"):
        assert f'kubetune_job_restarts_total{{namespace="team-a",reason="{reason}"}} 0.0' in text
    m.record([MetricEvent("restart", "NodeLost")], namespace="team-a")
    assert 'kubetune_job_restarts_total{namespace="team-a",reason="NodeLost"} 1.0' in exposition(m)
