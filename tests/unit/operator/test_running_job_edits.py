"""Edits to a running job: what waits for the next attempt says so (issue 9, item 15), and a
restart request (the kubetune.io/restart annotation) replaces the gang."""

from __future__ import annotations

from typing import Any


def test_editing_env_of_a_running_job_says_it_applies_to_the_next_attempt(
    make_cluster: Any,
) -> None:
    c = make_cluster()
    c.start_running()
    assert c.condition("UpdatesPending") is None
    c.job["spec"]["env"] = [{"name": "LOG_LEVEL", "value": "debug"}]
    c.job["metadata"]["generation"] = 2
    plan = c.step()
    cond = c.condition("UpdatesPending")
    assert cond is not None and cond["status"] == "True"
    assert cond["reason"] == "AppliesToNextAttempt"
    assert "spec.env changed after attempt 1" in cond["message"]
    assert "spec.runPolicy.suspend: true" in cond["message"], "says how to apply it now"
    assert c.status["phase"] == "Running"
    assert not plan.pods_to_delete(), "the running gang is not disturbed"
    # Undoing the edit clears it.
    c.job["spec"].pop("env")
    c.job["metadata"]["generation"] = 3
    c.step()
    assert c.condition("UpdatesPending") is None


def test_a_new_attempt_picks_the_edit_up_and_the_condition_goes(make_cluster: Any) -> None:
    c = make_cluster()
    c.start_running()
    c.job["spec"]["image"] = c.job["spec"].get("image") or "kubetune/trainer:0.1.0"
    c.job["spec"]["checkpoint"] = {"intervalSteps": 77}
    c.job["metadata"]["generation"] = 2
    c.step()
    assert "spec.checkpoint" in c.condition("UpdatesPending")["message"]
    # The gang fails (retryable): the next attempt is created from the current spec.
    for body in c.workers(1):
        c.finish(body["metadata"]["name"], exit_code=1, reason="Error")
    c.settle()
    c.advance(60)
    c.settle()
    assert c.workers(2), "attempt 2 exists"
    assert c.condition("UpdatesPending") is None
    c.place_all(2)
    c.settle()
    assert c.status["phase"] == "Running"
    assert c.condition("UpdatesPending") is None


def test_a_restart_annotation_replaces_the_gang_without_using_up_a_retry(
    make_cluster: Any,
) -> None:
    """Argo CD's restart action (or kubectl annotate) sets kubetune.io/restart: the gang is
    replaced under the same attempt number, resuming from the newest checkpoint, once per
    new value."""
    c = make_cluster()
    c.graceful_delete = True
    c.start_running()
    old_uids = {b["metadata"]["uid"] for b in c.workers(1)}
    c.job["metadata"].setdefault("annotations", {})["kubetune.io/restart"] = "2026-12-02T10:00:00Z"
    plan = c.step()
    assert sorted(plan.pods_to_delete()) == ["tune-a1-0", "tune-a1-1"]
    restarting = c.condition("Restarting")
    assert (restarting["status"], restarting["reason"]) == ("True", "RestartRequested")
    assert "resum" in restarting["message"] or "checkpoint" in restarting["message"]
    assert c.status["phase"] == "Queued"
    c.finish_gone_deletions()
    c.settle()
    new = c.workers(1)
    assert len(new) == 2 and not old_uids & {b["metadata"]["uid"] for b in new}
    assert all(
        b["metadata"]["annotations"]["kubetune.io/restart"] == "2026-12-02T10:00:00Z" for b in new
    )
    c.place_all(1)
    c.settle()
    assert c.status["phase"] == "Running"
    assert c.status["attempts"] == 1, "not a failed attempt"
    # The same value again does nothing; a new one restarts again.
    assert not c.step().pods_to_delete()
    c.job["metadata"]["annotations"]["kubetune.io/restart"] = "2026-12-02T11:00:00Z"
    assert sorted(c.step().pods_to_delete()) == ["tune-a1-0", "tune-a1-1"]
