"""The ModelRollout state machine: pure, like ``lifecycle.decide`` for FineTuneJobs.

:func:`decide` takes what the runtime observed (the rollout, the route's weights, the
candidate FineTuneJob, the time and, when one was due, this interval's analysis) and
returns the next status and what to do: the candidate weight to write on the route, the
steering annotations to remove, Events, what the metrics count, and when to look again.
Nothing here does I/O, so every path (promotion, each kind of abort, pauses, retries) is
unit-tested with a fake clock and fake analysis outcomes.

The clocks live in the status (``stepStartedAt``, ``lastAnalysisAt``), never in memory: a
restarted operator neither re-measures early nor skips an interval.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from kubetune.api.rollout import (
    ABORT_ANNOTATION,
    CONDITION_CANDIDATE_READY,
    CONDITION_PROGRESSING,
    CONDITION_PROMOTED,
    CONDITION_ROLLED_BACK,
    PROMOTE_ANNOTATION,
    RETRY_ANNOTATION,
    AbortRecord,
    AnalysisStep,
    Measurement,
    MetricStatus,
    ModelRollout,
    ModelRolloutSpec,
    ModelRolloutStatus,
    RolloutStep,
)
from kubetune.api.status import CONDITION_PROMOTABLE, Condition
from kubetune_operator.rollout.analysis import AnalysisContext, AnalysisOutcome, MetricResult
from kubetune_operator.rollout.route import RouteWeights

EventType = Literal["Normal", "Warning"]

#: Measurements kept in status.measurements; older ones are dropped and counted.
MAX_MEASUREMENTS = 500
#: How often a rollout waiting for something outside it (its job, its route) looks again.
WAIT_SECONDS = 10.0
#: How soon a written weight is read back from the route.
CONFIRM_SECONDS = 1.0

#: Abort reasons the controller itself gives (the analysis gives the metric ones).
ABORTED_BY_USER = "AbortedByUser"
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
CANDIDATE_NOT_PROMOTABLE = "CandidateNotPromotable"
PAUSE_STEP = "PauseStep"
ANALYSIS_INCONCLUSIVE = "AnalysisInconclusive"

ACTIVE_PHASES = frozenset({"Progressing", "Paused"})
TERMINAL_PHASES = frozenset({"Promoted", "RolledBack", "Failed"})


# -- inputs -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CandidateJob:
    """What a rollout needs to know of its candidate's FineTuneJob."""

    phase: str | None
    promotable: str | None  # the Promotable condition's status; None until it is set
    message: str = ""

    @classmethod
    def from_body(cls, body: Mapping[str, Any] | None) -> CandidateJob | None:
        if body is None:
            return None
        status = body.get("status") or {}
        cond = next(
            (c for c in status.get("conditions") or [] if c.get("type") == CONDITION_PROMOTABLE),
            None,
        )
        return cls(
            phase=status.get("phase"),
            promotable=None if cond is None else str(cond.get("status")),
            message="" if cond is None else str(cond.get("message") or cond.get("reason") or ""),
        )


@dataclass(frozen=True)
class AnalysisRun:
    """One interval's analysis, done by the runtime for the :class:`AnalysisRequest`."""

    results: list[MetricResult]
    statuses: list[MetricStatus]
    outcome: AnalysisOutcome


@dataclass(frozen=True)
class Observation:
    rollout: ModelRollout
    now: datetime
    route: RouteWeights | str  # the weights, or why the route cannot carry the rollout
    job: CandidateJob | None  # None: the FineTuneJob does not exist
    analysis: AnalysisRun | None = None

    @property
    def annotations(self) -> Mapping[str, str]:
        return self.rollout.metadata.annotations

    @property
    def generation(self) -> int | None:
        return self.rollout.metadata.generation


@dataclass(frozen=True)
class AnalysisRequest:
    """An analysis is due: measure with ``context``, then fold (``new_step``) and decide
    (``step``, ``step_intervals``) -- see :mod:`kubetune_operator.rollout.analysis`."""

    context: AnalysisContext
    step: AnalysisStep | None  # the analysis step waiting for a verdict, if any
    step_intervals: int  # intervals in the current step, this one included
    new_step: bool  # the first measurement of the current step


# -- outputs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RolloutEvent:
    type: EventType
    reason: str
    message: str


@dataclass
class Decision:
    status: ModelRolloutStatus
    set_weight: int | None = None  # the candidate's weight to write (the baseline: the rest)
    remove_annotations: list[str] = field(default_factory=list)
    events: list[RolloutEvent] = field(default_factory=list)
    measured: list[Measurement] = field(default_factory=list)
    aborted: str | None = None  # the abort reason, when this decision aborts
    promoted: bool = False
    requeue_after: float | None = None

    def requeue(self, seconds: float) -> None:
        seconds = max(0.5, seconds)
        if self.requeue_after is None or seconds < self.requeue_after:
            self.requeue_after = seconds


# -- helpers ----------------------------------------------------------------------------------
def candidate_hash(spec: ModelRolloutSpec) -> str:
    """Identity of what is rolled out: a rolled-back rollout is retried when it changes."""
    parts = {
        "candidate": spec.candidate.model_dump(mode="json", by_alias=True),
        "steps": [s.model_dump(mode="json", by_alias=True) for s in spec.steps],
        "analysis": None
        if spec.analysis is None
        else spec.analysis.model_dump(mode="json", by_alias=True),
    }
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def step_kind(step: RolloutStep) -> str:
    if step.set_weight is not None:
        return "setWeight"
    return "pause" if step.pause is not None else "analysis"


def set_condition(
    status: ModelRolloutStatus,
    kind: str,
    state: Literal["True", "False", "Unknown"],
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> None:
    """Set a condition; lastTransitionTime moves only when its status changes."""
    old = next((c for c in status.conditions if c.type == kind), None)
    new = Condition(
        type=kind,
        status=state,
        reason=reason,
        message=message[:32768],
        last_transition_time=now
        if old is None or old.status != state
        else old.last_transition_time,
        observed_generation=generation,
    )
    if old is None:
        status.conditions = [*status.conditions, new]
    else:
        status.conditions = [new if c.type == kind else c for c in status.conditions]


def describe(spec: ModelRolloutSpec, status: ModelRolloutStatus) -> str:
    """Where the rollout is, in words: ``step 3/5: analysis 2/10 intervals, candidate 10 %``."""
    total = len(spec.steps)
    weight = f"candidate {status.candidate_weight} %"
    if status.current_step >= total:
        return f"all {total} steps done, {weight}"
    step = spec.steps[status.current_step]
    where = f"step {status.current_step + 1}/{total}"
    if step.set_weight is not None:
        what = f"setting weight {step.set_weight}"
    elif step.pause is not None:
        if step.pause.duration_seconds is None:
            what = f"paused until promoted ({PROMOTE_ANNOTATION}: step)"
        else:
            what = f"pause {step.pause.duration_seconds}s"
    else:
        assert step.analysis is not None
        what = f"analysis {status.step_intervals}/{step.analysis.max_intervals} intervals"
        if status.pause_reason == ANALYSIS_INCONCLUSIVE:
            what += f", inconclusive: paused until promoted ({PROMOTE_ANNOTATION}: step)"
    return f"{where}: {what}, {weight}"


def fresh_status(digest: str) -> ModelRolloutStatus:
    return ModelRolloutStatus(phase="Pending", candidate_hash=digest)


# -- when to measure --------------------------------------------------------------------------
def _analysis_anchor(rollout: ModelRollout, status: ModelRolloutStatus) -> datetime | None:
    """The time the next measurement counts from, or None when none is due at all."""
    spec = rollout.spec
    if spec.analysis is None or status.phase not in ACTIVE_PHASES:
        return None
    if status.candidate_hash != candidate_hash(spec):
        return None
    in_analysis_step = (
        status.current_step < len(spec.steps)
        and spec.steps[status.current_step].analysis is not None
    )
    if status.candidate_weight <= 0 and not in_analysis_step:
        return None
    anchor = status.last_analysis_at or status.traffic_started_at or status.step_started_at
    if in_analysis_step and status.pause_reason != ANALYSIS_INCONCLUSIVE:
        # An analysis step's intervals are measured at its own weights only.
        starts = [t for t in (anchor, status.step_started_at) if t is not None]
        anchor = max(starts) if starts else None
    return anchor


def analysis_due(rollout: ModelRollout, now: datetime) -> AnalysisRequest | None:
    """The analysis to run in this reconcile, or None when none is due yet."""
    status = rollout.status
    spec = rollout.spec
    if status is None or spec.analysis is None:
        return None
    anchor = _analysis_anchor(rollout, status)
    if anchor is None:
        return None
    interval = spec.analysis.interval_seconds
    if now < anchor + timedelta(seconds=interval):
        return None
    step = spec.steps[status.current_step] if status.current_step < len(spec.steps) else None
    waiting = (
        step is not None
        and step.analysis is not None
        and status.phase == "Progressing"
        and status.pause_reason is None
    )
    started = status.traffic_started_at or status.step_started_at or now
    new_step = status.last_analysis_at is None or (
        status.step_started_at is not None and status.last_analysis_at < status.step_started_at
    )
    return AnalysisRequest(
        context=AnalysisContext(
            namespace=rollout.metadata.namespace or "",
            candidate_model=spec.candidate.model_name,
            baseline_model=spec.baseline.model_name,
            interval_seconds=interval,
            window_seconds=max(float(interval), (now - started).total_seconds()),
            step=status.current_step,
            weight=status.candidate_weight,
            now=now,
        ),
        step=step.analysis if waiting and step is not None else None,
        step_intervals=status.step_intervals + 1,
        new_step=new_step,
    )


def next_analysis_in(rollout: ModelRollout, status: ModelRolloutStatus, now: datetime) -> float:
    """Seconds until the next measurement is due (inf when none will be)."""
    spec = rollout.spec
    if spec.analysis is None:
        return float("inf")
    anchor = _analysis_anchor(rollout, status)
    if anchor is None:
        return float("inf")
    due = anchor + timedelta(seconds=spec.analysis.interval_seconds)
    return max(0.0, (due - now).total_seconds())


# -- the machine ------------------------------------------------------------------------------
class _Machine:
    def __init__(self, obs: Observation) -> None:
        self.obs = obs
        self.spec = obs.rollout.spec
        self.now = obs.now
        self.digest = candidate_hash(self.spec)
        old = obs.rollout.status
        self.st = old.model_copy(deep=True) if old is not None else fresh_status(self.digest)
        self.d = Decision(status=self.st)
        self.seen: set[str] = set()

    # small helpers
    def event(self, type_: EventType, reason: str, message: str) -> None:
        self.d.events.append(RolloutEvent(type_, reason, message))

    def cond(
        self, kind: str, state: Literal["True", "False", "Unknown"], reason: str, msg: str
    ) -> None:
        set_condition(self.st, kind, state, reason, msg, self.now, self.obs.generation)

    def consume(self, name: str) -> str | None:
        """An annotation's value, marked for removal."""
        value = self.obs.annotations.get(name)
        if value is not None and name not in self.d.remove_annotations:
            self.d.remove_annotations.append(name)
        return value

    def route_ok(self) -> RouteWeights | None:
        return self.obs.route if isinstance(self.obs.route, RouteWeights) else None

    # the run
    def run(self) -> Decision:
        self._restart_if_changed()
        self._retry()
        phase = self.st.phase
        if phase in TERMINAL_PHASES:
            self._ignore_steering(f"the rollout is {phase}")
        else:
            if self._abort_by_hand():
                return self._finish()
            if phase == "Pending":
                self._pending()
            if self.st.phase in ACTIVE_PHASES:
                self._active()
        return self._finish()

    def _finish(self) -> Decision:
        self.st.observed_generation = self.obs.generation
        if self.st.phase in ACTIVE_PHASES:
            message = describe(self.spec, self.st)
            if isinstance(self.obs.route, str):
                message += f"; HTTPRoute {self.spec.target.name}: {self.obs.route}"
            self.st.message = message[:1024]
        return self.d

    def _restart_if_changed(self) -> None:
        if self.st.candidate_hash == self.digest:
            return
        if self.obs.rollout.status is not None and self.st.candidate_hash is not None:
            self.event(
                "Normal",
                "CandidateChanged",
                "the candidate, steps or analysis changed: restarting from the first step",
            )
        self.st = fresh_status(self.digest)
        self.d.status = self.st

    def _retry(self) -> None:
        if self.consume(RETRY_ANNOTATION) is None:
            return
        if self.st.phase in ("RolledBack", "Failed"):
            self.event("Normal", "Retry", f"{RETRY_ANNOTATION}: restarting from the first step")
            self.st = fresh_status(self.digest)
            self.d.status = self.st
        else:
            self.event(
                "Warning",
                "AnnotationIgnored",
                f"{RETRY_ANNOTATION} applies to a RolledBack or Failed rollout, not "
                f"{self.st.phase}",
            )

    def _ignore_steering(self, why: str) -> None:
        for name in (PROMOTE_ANNOTATION, ABORT_ANNOTATION):
            if self.consume(name) is not None:
                self.event("Warning", "AnnotationIgnored", f"{name} ignored: {why}")

    def _abort_by_hand(self) -> bool:
        reason = self.consume(ABORT_ANNOTATION)
        if reason is None:
            return False
        self.abort(ABORTED_BY_USER, reason.strip() or f"aborted by {ABORT_ANNOTATION}")
        return True

    # -- Pending -----------------------------------------------------------------------------
    def _pending(self) -> None:
        promote = self.obs.annotations.get(PROMOTE_ANNOTATION)
        job = self.obs.job
        name = self.spec.candidate.fine_tune_job
        if job is not None and job.phase == "Succeeded" and job.promotable == "False":
            self._ignore_steering("the candidate is not promotable")
            message = f"FineTuneJob {name} is not promotable: {job.message}".rstrip(": ")
            self.st.phase = "Failed"
            self.st.message = message
            self.cond(CONDITION_CANDIDATE_READY, "False", CANDIDATE_NOT_PROMOTABLE, message)
            self.cond(CONDITION_PROGRESSING, "False", CANDIDATE_NOT_PROMOTABLE, message)
            self.event("Warning", CANDIDATE_NOT_PROMOTABLE, message)
            return
        waiting: tuple[str, str] | None = None
        if job is None:
            waiting = ("CandidateMissing", f"waiting for FineTuneJob {name} to exist")
        elif job.phase != "Succeeded":
            waiting = (
                "CandidateNotSucceeded",
                f"waiting for FineTuneJob {name} to succeed (phase {job.phase or 'unknown'})",
            )
        elif job.promotable != "True":
            waiting = ("EvaluationPending", "waiting for the job's evaluation verdict")
        elif isinstance(self.obs.route, str):
            waiting = (
                "RouteNotReady",
                f"HTTPRoute {self.spec.target.name}: {self.obs.route}",
            )
        if waiting is not None:
            if promote is not None:
                self._ignore_steering("the rollout is Pending")
            self.st.message = waiting[1]
            self.cond(CONDITION_CANDIDATE_READY, "False", *waiting)
            self.d.requeue(WAIT_SECONDS)
            return
        self.cond(
            CONDITION_CANDIDATE_READY, "True", "CandidateReady", f"FineTuneJob {name} is promotable"
        )
        self.event("Normal", "Started", f"rolling out {self.spec.candidate.model_name}")
        self._start_step(0)

    # -- Progressing / Paused ----------------------------------------------------------------
    def _active(self) -> None:
        if self._analysis():
            return
        promote = self.consume(PROMOTE_ANNOTATION)
        if promote is not None:
            if promote == "full":
                self.event("Normal", "PromotedByUser", f"{PROMOTE_ANNOTATION}: full")
                self.promote()
                return
            if promote == "step":
                self.event(
                    "Normal",
                    "StepPromoted",
                    f"{PROMOTE_ANNOTATION}: step ends step {self.st.current_step + 1}",
                )
                self._start_step(self.st.current_step + 1)
                if self.st.phase not in ACTIVE_PHASES:
                    return
            else:
                self.event(
                    "Warning",
                    "AnnotationIgnored",
                    f"{PROMOTE_ANNOTATION}={promote!r} ignored: the values are step and full",
                )
        for _ in range(len(self.spec.steps) + 1):
            before = (self.st.current_step, self.st.phase)
            self._step()
            if (
                self.st.current_step,
                self.st.phase,
            ) == before or self.st.phase not in ACTIVE_PHASES:
                break
        if self.st.phase in ACTIVE_PHASES:
            wait = next_analysis_in(self.obs.rollout, self.st, self.now)
            if wait != float("inf"):
                self.d.requeue(wait)

    def _analysis(self) -> bool:
        """Record this interval's analysis; True when it aborted the rollout."""
        run = self.obs.analysis
        if run is None or self.st.phase not in ACTIVE_PHASES:
            return False
        new = [r.measurement for r in run.results]
        self.d.measured.extend(new)
        kept = [*self.st.measurements, *new]
        dropped = max(0, len(kept) - MAX_MEASUREMENTS)
        self.st.measurements = kept[dropped:]
        self.st.measurements_dropped += dropped
        self.st.metrics = list(run.statuses)
        self.st.last_analysis_at = self.now
        self.st.step_intervals += 1
        for m in new:
            if m.verdict in ("Failed", "Error"):
                self.event("Warning", f"Measurement{m.verdict}", f"{m.metric}: {m.message}")
        outcome = run.outcome
        if outcome.abort_reason:
            message = outcome.abort_message or outcome.abort_reason
            self.abort(outcome.abort_reason, message, metric=outcome.abort_metric)
            return True
        step = self._current()
        if step is None or step.analysis is None or self.st.phase != "Progressing":
            return False
        if outcome.step_passed:
            self.event(
                "Normal",
                "AnalysisPassed",
                f"step {self.st.current_step + 1}: analysis passed after "
                f"{self.st.step_intervals} interval(s)",
            )
            self._start_step(self.st.current_step + 1)
        elif outcome.inconclusive:
            self.st.phase = "Paused"
            self.st.pause_reason = ANALYSIS_INCONCLUSIVE
            why = outcome.abort_message or (
                f"no verdict after {self.st.step_intervals} of {step.analysis.max_intervals} "
                "intervals (too little data?)"
            )
            message = (
                f"step {self.st.current_step + 1}: analysis inconclusive: {why}; paused until "
                f"promoted by hand ({PROMOTE_ANNOTATION}: step)"
            )
            self.cond(CONDITION_PROGRESSING, "False", ANALYSIS_INCONCLUSIVE, message)
            self.event("Warning", ANALYSIS_INCONCLUSIVE, message)
        return False

    def _current(self) -> RolloutStep | None:
        if self.st.current_step < len(self.spec.steps):
            return self.spec.steps[self.st.current_step]
        return None

    def _start_step(self, index: int) -> None:
        if index >= len(self.spec.steps):
            self.promote()
            return
        self.st.current_step = index
        self.st.step_started_at = self.now
        self.st.step_intervals = 0
        self.st.pause_reason = None
        self.st.phase = "Progressing"
        kind = step_kind(self.spec.steps[index])
        self.cond(
            CONDITION_PROGRESSING,
            "True",
            "StepStarted",
            f"step {index + 1}/{len(self.spec.steps)}: {kind}",
        )

    def _step(self) -> None:
        step = self._current()
        if step is None:
            self.promote()
            return
        started = self.st.step_started_at or self.now
        elapsed = (self.now - started).total_seconds()
        if step.set_weight is not None:
            route = self.route_ok()
            if route is not None and route.shows(step.set_weight):
                self._write_weight(step.set_weight)  # already there: only recorded
                self._start_step(self.st.current_step + 1)
                return
            if self._past_deadline(elapsed):
                return
            if route is None:
                self.d.requeue(WAIT_SECONDS)
                return
            self._write_weight(step.set_weight)
            self.d.requeue(CONFIRM_SECONDS)
            return
        if step.pause is not None:
            self.st.phase = "Paused"
            self.st.pause_reason = PAUSE_STEP
            duration = step.pause.duration_seconds
            until = "promoted by hand" if duration is None else f"{duration}s have passed"
            self.cond(
                CONDITION_PROGRESSING,
                "False",
                PAUSE_STEP,
                f"step {self.st.current_step + 1}: paused until {until}",
            )
            if duration is not None:
                if elapsed >= duration:
                    self._start_step(self.st.current_step + 1)
                else:
                    self.d.requeue(duration - elapsed)
            return
        # an analysis step: the verdicts come from _analysis
        if self.st.pause_reason == ANALYSIS_INCONCLUSIVE:
            return
        self._past_deadline(elapsed)

    def _past_deadline(self, elapsed: float) -> bool:
        deadline = self.spec.progress_deadline_seconds
        if elapsed <= deadline:
            self.d.requeue(deadline - elapsed + 0.5)
            return False
        self.abort(
            PROGRESS_DEADLINE_EXCEEDED,
            f"step {self.st.current_step + 1} ({step_kind(self.spec.steps[self.st.current_step])})"
            f" did not complete within progressDeadlineSeconds={deadline}",
        )
        return True

    def _write_weight(self, weight: int) -> None:
        if weight > 0 and self.st.traffic_started_at is None:
            self.st.traffic_started_at = self.now
        self.st.candidate_weight = weight
        route = self.route_ok()
        if route is not None and not route.shows(weight):
            self.d.set_weight = weight

    # -- endings -----------------------------------------------------------------------------
    def promote(self) -> None:
        self._write_weight(100)
        self.st.phase = "Promoted"
        self.st.current_step = len(self.spec.steps)
        self.st.pause_reason = None
        self.st.promoted_at = self.now
        message = (
            f"{self.spec.candidate.model_name} serves 100 % of HTTPRoute {self.spec.target.name}"
        )
        self.st.message = f"promoted: {message}"
        self.cond(CONDITION_PROMOTED, "True", "Promoted", message)
        self.cond(CONDITION_PROGRESSING, "False", "Promoted", message)
        self.event("Normal", "Promoted", message)
        self.d.promoted = True
        self.d.requeue_after = None

    def abort(self, reason: str, message: str, metric: str | None = None) -> None:
        self._write_weight(0)
        self.st.phase = "RolledBack"
        self.st.pause_reason = None
        step = min(self.st.current_step, 64)
        self.st.abort = AbortRecord(
            reason=reason[:128], message=message[:4096], metric=metric, time=self.now, step=step
        )
        text = f"rolled back ({reason}): {message}"
        self.st.message = text[:1024]
        self.cond(CONDITION_ROLLED_BACK, "True", reason, message)
        self.cond(CONDITION_PROGRESSING, "False", reason, message)
        self.event("Warning", reason, message)
        self.d.aborted = reason
        self.d.requeue_after = None


def decide(obs: Observation) -> Decision:
    """The next status of ``obs.rollout`` and what to do for it."""
    return _Machine(obs).run()
