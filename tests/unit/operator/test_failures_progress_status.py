"""Failure classification, backoff, progress mapping, status helpers and settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubetune.api.status import FineTuneJobStatus, Progress
from kubetune.contract.exit_codes import ExitCode
from kubetune_operator.failures import Failure, classify_pod, root_cause
from kubetune_operator.gang import backoff_seconds
from kubetune_operator.observed import (
    ContainerExit,
    NodeView,
    PodCondition,
    PodView,
    ProgressSample,
)
from kubetune_operator.progress import map_progress, progress_url, step_summary
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.status import merge_patch, set_condition

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def pod(**kw: Any) -> PodView:
    base: dict[str, Any] = {
        "name": "j-a1-0",
        "uid": "u",
        "job": "j",
        "role": "worker",
        "owner_uid": "o",
        "attempt": 1,
        "rank": 0,
        "phase": "Running",
        "node_name": "n1",
    }
    base.update(kw)
    return PodView(**base)


NODES = {"n1": NodeView("n1", True, NOW)}


def classify(p: PodView, nodes: dict[str, NodeView] | None = NODES) -> Failure | None:
    return classify_pod(p, nodes, NOW, 30.0)


# -- classification ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "retryable", "reason"),
    [
        (ExitCode.RETRYABLE, True, "Interrupted"),
        (ExitCode.INVALID_DATA, False, "InvalidData"),
        (ExitCode.INVALID_CONFIG, False, "InvalidConfig"),
        (ExitCode.MODEL_UNAVAILABLE, False, "ModelUnavailable"),
        (ExitCode.NUMERICAL_DIVERGENCE, False, "NumericalDivergence"),
        (ExitCode.UNSUPPORTED, False, "Unsupported"),
        (1, True, "Error"),
        (137, True, "Killed"),
        (143, True, "Terminated"),
    ],
)
def test_exit_codes(code: int, retryable: bool, reason: str) -> None:
    f = classify(pod(phase="Failed", exit=ContainerExit(int(code), "Error", "why")))
    assert f is not None and f.retryable is retryable and f.reason == reason
    assert "why" in f.message and f.pod == "j-a1-0" and f.exit_code == int(code)


def test_healthy_and_succeeded_pods_are_not_failures() -> None:
    assert classify(pod()) is None
    assert classify(pod(phase="Pending", node_name=None)) is None
    assert classify(pod(phase="Succeeded", exit=ContainerExit(0))) is None


def test_oomkilled() -> None:
    f = classify(pod(phase="Failed", exit=ContainerExit(137, "OOMKilled")))
    assert f is not None and f.retryable and f.reason == "OOMKilled"
    assert "resources.memory" in f.message


@pytest.mark.parametrize(
    ("condition_reason", "reason"),
    [
        ("PreemptionByScheduler", "Preempted"),
        ("DeletionByTaintManager", "NodeLost"),
        ("EvictionByEvictionAPI", "Evicted"),
        ("DeletionByPodGC", "NodeLost"),
        ("TerminationByKubelet", "Evicted"),
        ("SomethingNew", "Disrupted"),
    ],
)
def test_disruption_target_wins_over_exit_code(condition_reason: str, reason: str) -> None:
    f = classify(
        pod(
            phase="Failed",
            exit=ContainerExit(137, "Error"),
            disruption=PodCondition("True", condition_reason, "msg"),
        )
    )
    assert f is not None and f.retryable and f.reason == reason


@pytest.mark.parametrize(
    ("pod_reason", "reason"),
    [
        ("Evicted", "Evicted"),
        ("NodeLost", "NodeLost"),
        ("UnexpectedAdmissionError", "AdmissionFailed"),
    ],
)
def test_pod_reasons(pod_reason: str, reason: str) -> None:
    f = classify(pod(phase="Failed", reason=pod_reason, message="m"))
    assert f is not None and f.retryable and f.reason == reason


def test_nodes() -> None:
    assert classify(pod(node_name="gone")).reason == "NodeLost"  # type: ignore[union-attr]
    not_ready = {"n1": NodeView("n1", False, NOW - timedelta(seconds=10))}
    assert classify(pod(), not_ready) is None
    long_gone = {"n1": NodeView("n1", False, NOW - timedelta(seconds=31))}
    assert classify(pod(), long_gone).reason == "NodeLost"  # type: ignore[union-attr]
    assert classify(pod(node_name="gone"), None) is None, "no node information: no verdict"
    assert classify(pod(phase="Unknown")).reason == "NodeLost"  # type: ignore[union-attr]


def test_deleted_running_pod() -> None:
    assert classify(pod(deleting=True)).reason == "PodDeleted"  # type: ignore[union-attr]


def test_root_cause() -> None:
    collateral = Failure(True, "Error", "peer gone", rank=0, at=NOW)
    node = Failure(True, "NodeLost", "node", rank=1, at=NOW + timedelta(seconds=5))
    permanent = Failure(False, "InvalidData", "bad", rank=3)
    assert root_cause([]) is None
    assert root_cause([collateral, node]) is node
    assert root_cause([collateral, node, permanent]) is permanent
    early = Failure(True, "Error", "first", rank=2, at=NOW - timedelta(seconds=1))
    assert root_cause([collateral, early]) is early


# -- backoff -----------------------------------------------------------------------------------
def test_backoff() -> None:
    assert [backoff_seconds(n, 10, 300) for n in range(6)] == [0, 10, 20, 40, 80, 160]
    assert backoff_seconds(7, 10, 300) == 300


@given(st.integers(min_value=1, max_value=10_000))
def test_backoff_bounded_and_monotonic(n: int) -> None:
    assert 0 < backoff_seconds(n, 10, 300) <= 300
    assert backoff_seconds(n, 10, 300) <= backoff_seconds(n + 1, 10, 300)


# -- progress ----------------------------------------------------------------------------------
def test_map_progress() -> None:
    sample = ProgressSample(
        {
            "state": "training",
            "step": 30,
            "totalSteps": 120,
            "epoch": 0.5,
            "loss": 1.25,
            "evalLoss": 1.4,
            "tokensPerSecond": 1234.5,
            "etaSeconds": 99.6,
            "lastCheckpointStep": 25,
            "lastCheckpointPath": "/out/checkpoints/step-25",
            "updatedAt": "2026-01-01T11:59:00Z",
        },
        NOW,
        attempt=1,
    )
    progress, checkpoint = map_progress(sample, None, None)
    assert progress is not None and checkpoint is not None
    assert (progress.step, progress.total_steps, progress.percent) == (30, 120, 25)
    assert progress.summary == "30/120 (25%)"
    assert progress.eta_seconds == 100 and progress.eval_loss == 1.4
    assert progress.last_update_time == NOW
    assert (checkpoint.step, checkpoint.path) == (25, "/out/checkpoints/step-25")
    # Same step later: the time of the last advance is kept (stall detection).
    later = ProgressSample(dict(sample.document), NOW + timedelta(seconds=60), attempt=1)
    again, cp2 = map_progress(later, progress, checkpoint)
    assert again is not None and again.last_update_time == NOW and cp2 is checkpoint


def test_a_new_attempt_still_loading_keeps_the_jobs_progress() -> None:
    """After a restart, rank 0 of the new attempt first reports ``loading`` with no plan
    (0/0). That says nothing about how far the job got: the numbers so far stay, so a job
    whose last attempt ends before it is sampled again does not finish at step 0."""
    training = ProgressSample({"state": "training", "step": 40, "totalSteps": 60}, NOW, 1)
    progress, _ = map_progress(training, None, None)
    loading = ProgressSample({"state": "loading"}, NOW + timedelta(seconds=30), attempt=2)
    kept, _ = map_progress(loading, progress, None)
    assert kept is not None and progress is not None
    assert (kept.step, kept.total_steps, kept.percent) == (40, 60, 66)
    assert kept.last_update_time == progress.last_update_time, "not an advance"
    resumed = ProgressSample({"state": "training", "step": 31, "totalSteps": 60}, NOW, 2)
    back, _ = map_progress(resumed, kept, None)
    assert back is not None and back.step == 31, "the resumed attempt's own numbers win"


def test_map_progress_rejects_garbage_and_non_finite() -> None:
    prev = Progress(step=1)
    same, _ = map_progress(ProgressSample({"step": -5}, NOW), prev, None)
    assert same is prev
    p, _ = map_progress(
        ProgressSample({"step": 2, "loss": float("inf"), "tokensPerSecond": float("nan")}, NOW),
        None,
        None,
    )
    assert p is not None and p.loss is None and p.tokens_per_second is None


def test_summaries() -> None:
    assert step_summary(0, 0, "loading") == "loading"
    assert step_summary(300, 300) == "300/300 (100%)"
    assert step_summary(5, 10, "evaluating") == "5/10 (50%) evaluating"
    assert step_summary(7, 0) == "step 7"


def test_progress_url_template() -> None:
    p = pod(pod_ip="10.1.2.3")
    assert (
        progress_url(
            "http://{pod_ip}:{port}/progress", p, namespace="n", job="j", attempt=1, port=9400
        )
        == "http://10.1.2.3:9400/progress"
    )
    assert (
        progress_url(
            "http://{pod_ip}:{port}/progress", pod(), namespace="n", job="j", attempt=1, port=9400
        )
        is None
    )
    assert (
        progress_url(
            "http://127.0.0.1:81/{namespace}/{job}/{attempt}",
            pod(),
            namespace="n",
            job="j",
            attempt=2,
            port=1,
        )
        == "http://127.0.0.1:81/n/j/2"
    )


# -- conditions and patches --------------------------------------------------------------------
def test_condition_transition_semantics() -> None:
    status = FineTuneJobStatus()
    assert set_condition(status, "Running", "False", "Pending", "a", NOW, 1)
    assert not set_condition(status, "Running", "False", "Other", "b", NOW + timedelta(1), 2)
    cond = status.conditions[0]
    assert cond.reason == "Other" and cond.last_transition_time == NOW
    assert cond.observed_generation == 2
    assert set_condition(status, "Validated", "True", "Ok", "", NOW, 1)
    assert set_condition(status, "Running", "True", "Go", "", NOW + timedelta(2), 2)
    assert [c.type for c in status.conditions] == ["Running", "Validated"], "stable order"
    assert status.conditions[0].last_transition_time == NOW + timedelta(2)


def test_merge_patch() -> None:
    old = {"phase": "Queued", "progress": {"step": 1, "summary": "x"}, "gpus": 8}
    new = {"phase": "Running", "progress": {"step": 2, "summary": "x"}, "attempts": 1}
    assert merge_patch(old, new) == {
        "phase": "Running",
        "progress": {"step": 2},
        "gpus": None,
        "attempts": 1,
    }
    assert merge_patch(new, new) is None


# -- settings ----------------------------------------------------------------------------------
def test_settings_from_env() -> None:
    env = {
        "KUBETUNE_OPERATOR_NAMESPACES": "a, b",
        "KUBETUNE_OPERATOR_BACKOFF_BASE_SECONDS": "1.5",
        "KUBETUNE_OPERATOR_POD_ANNOTATIONS": '{"x": "y"}',
        "KUBETUNE_OPERATOR_LEADER_ELECTION": "false",
        "KUBETUNE_OPERATOR_PROGRESS_URL_TEMPLATE": "http://127.0.0.1:1/{job}",
    }
    s = OperatorSettings.from_env(env, trainer_image="img:1", metrics_port=None)
    assert s.namespaces == ["a", "b"] and not s.clusterwide
    assert s.backoff_base_seconds == 1.5 and s.pod_annotations == {"x": "y"}
    assert s.leader_election is False and s.trainer_image == "img:1"
    assert s.metrics_port == 8080
    assert OperatorSettings.from_env({}).clusterwide


def test_settings_guard_rails() -> None:
    with pytest.raises(ValueError):
        OperatorSettings(lease_duration_seconds=5, renew_deadline_seconds=6)
    with pytest.raises(ValueError):
        OperatorSettings(progress_interval_seconds=45)  # status must refresh within 30 s
