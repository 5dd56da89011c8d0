"""The ModelRollout state machine (rollout/state.py) over whole step lists, with a fake clock,
a fake route and scripted analysis outcomes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from kubetune.api.rollout import ABORT_ANNOTATION, PROMOTE_ANNOTATION, RETRY_ANNOTATION
from kubetune_operator.rollout.route import RouteWeights
from kubetune_operator.rollout.state import CandidateJob, candidate_hash
from tests.unit.operator.rollout_world import World, failing, no_data, passing, rollout_doc

CANARY = [
    {"setWeight": 10},
    {"analysis": {"minIntervals": 1, "maxIntervals": 4}},
    {"setWeight": 50},
    {"pause": {"durationSeconds": 60}},
    {"analysis": {"minIntervals": 1, "maxIntervals": 4}},
]


def cond(world: World, kind: str) -> dict[str, str]:
    return next(c for c in world.status["conditions"] if c["type"] == kind)


def test_promotion_through_every_step_with_the_route_following() -> None:
    world = World(rollout_doc(CANARY), outcome=passing)
    world.reconcile()
    assert world.phase == "Progressing" and world.writes == [(world.now, 10)]
    assert world.status["message"] == "step 1/5: setting weight 10, candidate 10 %"
    world.run_for(600, until=lambda w: w.phase == "Promoted")
    assert world.phase == "Promoted"
    assert [w for _, w in world.writes] == [10, 50, 100]
    assert world.weights() == (0, 100)
    assert cond(world, "Promoted")["status"] == "True"
    assert cond(world, "Progressing")["status"] == "False"
    assert ("Normal", "Promoted") in world.events()
    assert world.decisions[-1].promoted
    assert world.status["candidateWeight"] == 100
    # the pause held for its whole duration: 50 % was written, then 60 s went by
    (t50,) = [t for t, w in world.writes if w == 50]
    assert world.status["promotedAt"] >= (t50 + timedelta(seconds=60)).isoformat()[:19]
    assert world.status["trafficStartedAt"] and world.status["measurements"]


def test_a_step_completes_only_once_the_route_shows_the_weight() -> None:
    world = World(rollout_doc([{"setWeight": 20}, {"pause": {}}], analysis=False))
    world.reconcile()
    assert world.status["currentStep"] == 0 and world.writes
    world.route = RouteWeights(100, 0)  # someone (or a stale read) shows the old weights
    d = world.reconcile()
    assert d.set_weight == 20 and world.status["currentStep"] == 0
    d = world.reconcile()  # this read shows 20/80
    assert d.set_weight is None and world.status["currentStep"] == 1
    assert world.phase == "Paused" and world.status["pauseReason"] == "PauseStep"


@pytest.mark.parametrize("at_step", [0, 1, 2, 3])
def test_abort_at_each_step_kind_sets_weight_zero_in_the_same_plan(at_step: int) -> None:
    steps = [
        {"setWeight": 10},
        {"analysis": {"maxIntervals": 10}},
        {"pause": {}},
        {"setWeight": 30},
    ]
    world = World(rollout_doc(steps, deadline=10_000))
    world.outcome = lambda r: ("Inconclusive", passing(r)[1]) if r.step is None else no_data(r)
    world.reconcile()  # Pending -> step 0, 10 % written
    # walk to the step: by hand through the manual pause, passing the analysis
    while world.status["currentStep"] < at_step:
        if world.phase == "Paused" and world.status["currentStep"] < at_step:
            world.annotate(PROMOTE_ANNOTATION, "step")
        world.outcome = passing
        world.reconcile()
        world.now += timedelta(seconds=30)
    world.outcome = failing
    if at_step == 0:  # a setWeight step in flight: the route does not show 10 % yet
        world.route = RouteWeights(95, 5)
    if at_step == 3:  # the same for 30 %
        world.route = RouteWeights(90, 10)
    world.now += timedelta(seconds=31)
    d = world.reconcile()
    assert d.aborted == "MetricFailed" and d.set_weight == 0
    assert world.weights()[1] == 0 and world.phase == "RolledBack"
    assert world.writes[-1] == (world.failed_at[-1], 0)  # the same reconcile as the failure
    assert world.status["abort"]["reason"] == "MetricFailed"
    assert world.status["abort"]["metric"] == "latency"
    assert world.status["abort"]["step"] == at_step
    assert cond(world, "RolledBack")["status"] == "True"
    assert ("Warning", "MetricFailed") in world.events()


def test_background_analysis_aborts_within_one_interval_of_the_failure() -> None:
    world = World(rollout_doc([{"setWeight": 10}, {"pause": {}}]), outcome=passing)
    world.run_for(200)
    assert world.phase == "Paused"
    assert len(world.measured_at) >= 5
    gaps = {
        (b - a).total_seconds()
        for a, b in zip(world.measured_at, world.measured_at[1:], strict=False)
    }
    assert max(gaps) <= 35  # one interval (30 s) plus the 5 s polling of this harness
    world.outcome = failing
    world.run_for(60, until=lambda w: w.phase == "RolledBack")
    assert world.phase == "RolledBack"
    assert world.writes[-1] == (world.failed_at[0], 0)


def test_measurements_are_capped_and_counted() -> None:
    world = World(rollout_doc([{"setWeight": 10}, {"pause": {}}]), outcome=passing)
    world.reconcile()
    world.reconcile()
    world.doc["status"]["measurements"] = [
        {
            "metric": "latency",
            "time": "2026-12-01T11:00:00Z",
            "step": 0,
            "weight": 10,
            "verdict": "Successful",
        }
    ] * 500
    world.now += timedelta(seconds=31)
    world.reconcile()
    assert len(world.status["measurements"]) == 500
    assert world.status["measurementsDropped"] == 1
    assert world.status["measurements"][-1]["time"].startswith("2026-12-01T12:00:3")


def test_restart_neither_remeasures_early_nor_skips() -> None:
    """lastAnalysisAt in the status drives the timing (the harness keeps no memory)."""
    world = World(rollout_doc([{"setWeight": 10}, {"pause": {}}]), outcome=passing)
    world.run_for(40)
    last = world.measured_at[-1]
    world.now = last + timedelta(seconds=29)
    world.reconcile()
    assert world.measured_at[-1] == last
    world.now = last + timedelta(seconds=30)
    d = world.reconcile()
    assert world.measured_at[-1] == world.now and d.requeue_after == 30


def test_inconclusive_pauses_never_promotes_and_a_manual_promote_continues() -> None:
    steps = [
        {"setWeight": 10},
        {"analysis": {"minIntervals": 2, "maxIntervals": 3}},
        {"setWeight": 40},
    ]
    world = World(rollout_doc(steps), outcome=no_data)
    world.run_for(1200)
    assert world.phase == "Paused" and world.status["pauseReason"] == "AnalysisInconclusive"
    assert world.status["currentStep"] == 1
    assert [w for _, w in world.writes] == [10]  # never promoted, never moved on
    assert "inconclusive" in world.status["message"]
    assert world.status["message"].startswith("step 2/3: analysis ")
    assert cond(world, "Progressing")["reason"] == "AnalysisInconclusive"
    assert ("Warning", "AnalysisInconclusive") in world.events()
    world.annotate(PROMOTE_ANNOTATION, "step")
    d = world.reconcile()
    assert PROMOTE_ANNOTATION in d.remove_annotations
    assert d.set_weight == 40 and world.status["currentStep"] == 2
    world.run_for(30, until=lambda w: w.phase == "Promoted")
    assert world.phase == "Promoted"


def test_a_pause_without_duration_waits_for_promote_step_and_full_promotes_at_once() -> None:
    world = World(rollout_doc([{"setWeight": 5}, {"pause": {}}, {"setWeight": 50}], analysis=False))
    world.run_for(3600)
    assert world.phase == "Paused" and world.status["currentStep"] == 1
    assert cond(world, "Progressing")["reason"] == "PauseStep"
    assert world.decisions[-1].requeue_after is None  # nothing to wait for but a person
    world.annotate(PROMOTE_ANNOTATION, "full")
    d = world.reconcile()
    assert d.set_weight == 100 and world.phase == "Promoted" and d.promoted
    assert PROMOTE_ANNOTATION not in world.doc["metadata"]["annotations"]


def test_a_pause_with_duration_holds_exactly_that_long() -> None:
    world = World(
        rollout_doc([{"setWeight": 5}, {"pause": {"durationSeconds": 90}}], analysis=False)
    )
    world.reconcile()
    world.reconcile()
    assert world.phase == "Paused"
    started = world.now
    d = world.reconcile()
    assert d.requeue_after == pytest.approx(90)
    world.now = started + timedelta(seconds=89)
    world.reconcile()
    assert world.phase == "Paused"
    world.now = started + timedelta(seconds=90)
    world.reconcile()
    assert world.phase == "Promoted"


def test_abort_annotation_rolls_back_with_its_text_as_the_reason() -> None:
    world = World(rollout_doc([{"setWeight": 30}, {"pause": {}}], analysis=False))
    world.run_for(10)
    world.annotate(ABORT_ANNOTATION, "users complain about tone")
    d = world.reconcile()
    assert d.aborted == "AbortedByUser" and d.set_weight == 0
    assert world.status["abort"]["message"] == "users complain about tone"
    assert ABORT_ANNOTATION in d.remove_annotations


def test_not_retried_after_rollback_until_retry_annotation_or_candidate_change() -> None:
    world = World(rollout_doc([{"setWeight": 10}, {"pause": {}}]), outcome=failing)
    world.run_for(100, until=lambda w: w.phase == "RolledBack")
    assert world.phase == "RolledBack"
    writes = len(world.writes)
    world.outcome = passing
    world.run_for(600)
    assert world.phase == "RolledBack" and len(world.writes) == writes  # left alone
    world.annotate(RETRY_ANNOTATION, "1")
    d = world.reconcile()
    assert RETRY_ANNOTATION in d.remove_annotations
    assert world.phase == "Progressing" and world.status["currentStep"] == 0
    assert d.set_weight == 10 and "abort" not in world.status
    # a rollback, then a new candidate restarts it too
    world.outcome = failing
    world.run_for(100, until=lambda w: w.phase == "RolledBack")
    old_hash = world.status["candidateHash"]
    world.doc["spec"]["candidate"]["modelName"] = "tuned-v2"
    world.doc["metadata"]["generation"] = 2
    world.outcome = passing
    world.reconcile()
    assert world.status["candidateHash"] != old_hash
    assert world.status["candidateHash"] == candidate_hash(world.rollout.spec)
    assert world.phase == "Progressing" and world.status["observedGeneration"] == 2
    assert ("Normal", "CandidateChanged") in world.events()


def test_a_candidate_not_promotable_is_refused_and_the_route_untouched() -> None:
    world = World(rollout_doc(CANARY))
    world.job = CandidateJob("Succeeded", "False", "exact_match 0.41 < baseline 0.52 - 0.02")
    d = world.reconcile()
    assert world.phase == "Failed" and d.set_weight is None and not world.writes
    assert cond(world, "CandidateReady")["reason"] == "CandidateNotPromotable"
    assert "exact_match 0.41" in world.status["message"]
    assert ("Warning", "CandidateNotPromotable") in world.events()
    world.run_for(120)
    assert world.phase == "Failed" and not world.writes


@pytest.mark.parametrize(
    ("job", "route", "message"),
    [
        (None, RouteWeights(100, None), "waiting for FineTuneJob sft to exist"),
        (CandidateJob("Running", None), RouteWeights(100, None), "to succeed (phase Running)"),
        (CandidateJob("Succeeded", None), RouteWeights(100, None), "evaluation verdict"),
        (CandidateJob("Succeeded", "True"), "not found", "HTTPRoute chat: not found"),
        (
            CandidateJob("Succeeded", "True"),
            "rule 0 has no backendRef to the baseline Service base",
            "no backendRef to the baseline",
        ),
    ],
)
def test_pending_until_the_candidate_and_the_route_are_ready(
    job: CandidateJob | None, route: RouteWeights | str, message: str
) -> None:
    world = World(rollout_doc(CANARY), job=job, route=route)
    d = world.reconcile()
    assert world.phase == "Pending" and message in world.status["message"]
    assert d.set_weight is None and d.requeue_after == 10
    assert cond(world, "CandidateReady")["status"] == "False"
    world.job, world.route = CandidateJob("Succeeded", "True"), RouteWeights(100, None)
    world.reconcile()
    assert world.phase == "Progressing" and world.writes


def test_progress_deadline_aborts_a_set_weight_the_route_never_shows() -> None:
    world = World(rollout_doc([{"setWeight": 10}], deadline=60), outcome=passing)
    world.reconcile()
    world.route = "rule 0 has no backendRef to the baseline Service base"  # edited away
    world.run_for(120, until=lambda w: w.phase == "RolledBack")
    assert world.status["abort"]["reason"] == "ProgressDeadlineExceeded"
    assert world.now - world.decisions[0].status.step_started_at <= timedelta(seconds=61)  # type: ignore[operator]


def test_pauses_and_inconclusive_waits_do_not_count_against_the_deadline() -> None:
    steps = [{"setWeight": 10}, {"analysis": {"maxIntervals": 1}}, {"pause": {}}]
    world = World(rollout_doc(steps, deadline=60), outcome=no_data)
    world.run_for(600)
    assert world.phase == "Paused" and world.status["pauseReason"] == "AnalysisInconclusive"
    world.annotate(PROMOTE_ANNOTATION, "step")
    world.outcome = lambda r: ("Inconclusive", passing(r)[1])
    world.run_for(600)
    assert world.phase == "Paused" and world.status["pauseReason"] == "PauseStep"


def test_unknown_promote_value_is_ignored_with_a_warning_and_removed() -> None:
    world = World(rollout_doc([{"setWeight": 10}, {"pause": {}}], analysis=False))
    world.run_for(10)
    world.annotate(PROMOTE_ANNOTATION, "yes please")
    d = world.reconcile()
    assert ("Warning", "AnnotationIgnored") in world.events()
    assert PROMOTE_ANNOTATION in d.remove_annotations and world.phase == "Paused"


def test_conditions_keep_their_transition_time_while_unchanged() -> None:
    world = World(rollout_doc([{"setWeight": 10}, {"pause": {}}], analysis=False))
    world.run_for(10)
    first = cond(world, "CandidateReady")["lastTransitionTime"]
    world.now += timedelta(seconds=100)
    world.reconcile()
    assert cond(world, "CandidateReady")["lastTransitionTime"] == first
    assert cond(world, "CandidateReady")["observedGeneration"] == 1
