"""GPU-hours and goodput of a FineTuneJob: pure accounting, kept in ``status.gpuHours``.

What counts (also in :class:`kubetune.api.status.GPUHours`' description):

* **Allocated**: each pod's GPU request x the time it held a node -- from being bound
  (``PodScheduled``) until it terminated (its container's ``finishedAt``) -- summed over all
  pods of all attempts. Start-up, image pulls and a graceful stop's grace period count (the
  GPUs are held); a gang still gated or unplaced holds nothing.
* **Productive**: the gang's GPUs x the time between two progress samples of the same gang
  in which the optimizer step advanced. Model loading before a gang's first sample,
  evaluation and checkpoint pauses (the step does not advance), stalls, backoffs and
  scheduling waits are not productive. A new gang (a restart, a resume after a suspension)
  redoes the steps after the checkpoint it resumed from, so productive falls back to its
  value at that step: :func:`productive_at` interpolates the kept history through
  ``(0, 0)``, ``(checkpointStep, productiveAtCheckpoint)`` and the old gang's last sample.
  The step is the new gang's first sample's step (the trainer reports the step it resumed
  at; steps it ran before being sampled are then credited to the old gang instead of the
  new one -- the same steps, counted once). The last poll interval of a gang (between its
  last sample and its end) is not counted.

Every sum is carried in the status and advanced from timestamps stored next to it
(``observedTime``, ``sampleTime``): the same reconcile repeated, or a failover to another
replica (even one whose clock is behind), adds nothing twice -- a window never starts
before the stored time. A pod that disappears without a reported termination loses the
time since the last stored observation (statuses are written when a pod binds or ends).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from kubetune.api.status import GPUHours
from kubetune_operator.observed import PodView

SECONDS_PER_HOUR = 3600.0
#: A status whose only change is gpuHours is written at most this often by default (each
#: status write is a watch event that reconciles the job again: the period bounds that).
#: The operator uses its progress interval: the sums move at the pace of the progress.
UPDATE_PERIOD_SECONDS = 15.0
#: Share of the budget at which a Warning Event says it is nearly spent.
BUDGET_WARNING_RATIO = 0.9
#: Decimals kept in the status: GPU-hours to 3.6 ms, goodput to 0.01 percentage points. The
#: sums are re-read from the status, so each write may be off by half a unit: 1.8 GPU-ms.
_HOURS_DECIMALS = 6
_RATIO_DECIMALS = 4
#: Progress states in which the step is the trainer's real position (not yet loading).
TRAINING_STATES = frozenset({"training", "evaluating", "saving", "done"})


@dataclass(frozen=True)
class Holding:
    """One pod's hold on GPUs: ``gpus`` from ``since`` until ``until`` (None: still held)."""

    gpus: float
    since: datetime
    until: datetime | None = None


@dataclass(frozen=True)
class Sample:
    """A progress sample of the gang that runs now: which gang (its rank-0 pod's uid), the
    step, its checkpoint step (if the document names one), when it was fetched and the
    gang's GPUs."""

    pod_uid: str
    step: int
    time: datetime
    gpus: float
    checkpoint_step: int | None = None


def holdings(pods: Iterable[PodView], resource: str) -> list[Holding]:
    """The GPU holds of ``pods`` (requests of ``resource``; pods without GPUs are skipped).

    Bound since the ``PodScheduled`` transition (else creation); a terminated pod held its
    GPUs until its container finished (unknown: until it was bound, i.e. nothing more).
    """
    out: list[Holding] = []
    for pod in pods:
        gpus = float(dict(pod.requests).get(resource, 0))
        if gpus <= 0 or not pod.bound:
            continue
        scheduled = pod.scheduled
        since = (
            scheduled.last_transition_time
            if scheduled is not None and scheduled.status == "True"
            else None
        ) or pod.created
        if since is None:
            continue
        until = None
        if pod.terminated:
            finished = pod.exit.finished_at if pod.exit is not None else None
            until = max(since, finished) if finished is not None else since
        out.append(Holding(gpus, since, until))
    return out


def gang_gpus(pods: Iterable[PodView], resource: str) -> float:
    """GPUs the pods of a gang request (what its productive time is multiplied by)."""
    return sum(float(dict(p.requests).get(resource, 0)) for p in pods)


def held_seconds(holds: Iterable[Holding], start: datetime | None, end: datetime) -> float:
    """GPU-seconds ``holds`` held within ``[start, end]`` (``start`` None: since each began)."""
    total = 0.0
    for hold in holds:
        lo = hold.since if start is None else max(hold.since, start)
        hi = end if hold.until is None else min(hold.until, end)
        if hi > lo:
            total += hold.gpus * (hi - lo).total_seconds()
    return total


def gpus_held(holds: Iterable[Holding]) -> float:
    """GPUs held right now (by holds that have not ended)."""
    return sum(h.gpus for h in holds if h.until is None)


def productive_at(points: Sequence[tuple[int, float]], step: int) -> float:
    """Productive seconds at ``step`` on the kept history through ``(0, 0)`` and ``points``
    (step, seconds): linear between known points, flat after the last one."""
    curve: list[tuple[int, float]] = [(0, 0.0)]
    for at, value in sorted(points):
        if at > curve[-1][0]:
            curve.append((at, max(value, curve[-1][1])))
    if step <= 0:
        return 0.0
    for (s0, v0), (s1, v1) in itertools.pairwise(curve):
        if step <= s1:
            return v0 + (v1 - v0) * (step - s0) / (s1 - s0)
    return curve[-1][1]


def _seconds(hours: float | None) -> float | None:
    return None if hours is None else hours * SECONDS_PER_HOUR


def _hours(seconds: float) -> float:
    return round(max(0.0, seconds) / SECONDS_PER_HOUR, _HOURS_DECIMALS)


def goodput(allocated: float, productive: float) -> float | None:
    """productive / allocated in 0-1; None while nothing was allocated."""
    if allocated <= 0 or not math.isfinite(allocated):
        return None
    return round(min(1.0, max(0.0, productive / allocated)), _RATIO_DECIMALS)


def account(
    previous: GPUHours | None,
    now: datetime,
    holds: Sequence[Holding],
    sample: Sample | None = None,
) -> GPUHours | None:
    """``previous`` advanced to ``now``: the GPU time of ``holds`` since ``observedTime``,
    and the productive time ``sample`` adds (or the rollback a new gang's first sample
    means). Pure and idempotent: the same inputs again change nothing. None while the job
    never held a GPU."""
    prev = previous or GPUHours()
    allocated_s = prev.allocated * SECONDS_PER_HOUR
    added = held_seconds(holds, prev.observed_time, now)
    observed = prev.observed_time
    if added > 0:
        allocated_s += added
        observed = now if observed is None else max(observed, now)
    productive_s = prev.productive * SECONDS_PER_HOUR
    cp_step = prev.checkpoint_step
    cp_s = _seconds(prev.productive_at_checkpoint)
    s_step, s_time, s_pod = prev.sample_step, prev.sample_time, prev.sampled_pod_uid
    new_gang = sample is not None and s_pod is not None and sample.pod_uid != s_pod
    newer = sample is not None and (s_time is None or sample.time > s_time)
    if sample is not None and (new_gang or newer):
        # The kept history so far: (step, productive seconds) points besides (0, 0).
        points: list[tuple[int, float]] = []
        if cp_step is not None and cp_s is not None:
            points.append((cp_step, cp_s))
        if s_step is not None:
            points.append((s_step, productive_s))
        if new_gang:
            # The new gang resumed at sample.step: what is kept is the history up to there
            # (never past the old gang's last sample); a checkpoint beyond it was not used.
            kept = sample.step if s_step is None else min(sample.step, s_step)
            productive_s = productive_at(points, kept)
            if cp_step is not None and cp_step > kept:
                cp_step = cp_s = None
            points = [(s, v) for s, v in points if s <= kept] + [(kept, productive_s)]
        elif s_step is not None and s_time is not None and sample.step > s_step:
            productive_s += sample.gpus * (sample.time - s_time).total_seconds()
            points.append((sample.step, productive_s))
        if sample.checkpoint_step is not None and sample.checkpoint_step != cp_step:
            cp_step = sample.checkpoint_step
            cp_s = min(productive_at(points, cp_step), productive_s)
        s_step, s_time, s_pod = sample.step, sample.time, sample.pod_uid
    if observed is None and s_time is None:
        return previous  # nothing ever held or sampled
    productive_s = min(productive_s, allocated_s)
    allocated, productive = _hours(allocated_s), _hours(productive_s)
    return GPUHours(
        allocated=allocated,
        productive=productive,
        goodput=goodput(allocated, productive),
        observed_time=observed,
        sample_time=s_time,
        sample_step=s_step,
        sampled_pod_uid=s_pod,
        checkpoint_step=cp_step,
        productive_at_checkpoint=None if cp_s is None else _hours(min(cp_s, productive_s)),
    )


def update_due(
    previous: GPUHours | None,
    fresh: GPUHours | None,
    now: datetime,
    holds: Iterable[Holding],
    period: float = UPDATE_PERIOD_SECONDS,
) -> bool:
    """Must ``fresh`` be written although nothing else in the status changed?

    Yes when it is the first, when ``period`` seconds passed since the stored observation,
    or when a pod bound or ended since (a pod may vanish soon after it ends; its last
    seconds are counted only while it is visible). Otherwise the stored value stays: the
    next accounting covers the window anyway, nothing is lost.
    """
    if fresh == previous or fresh is None:
        return False
    if previous is None or previous.observed_time is None:
        return True
    since = previous.observed_time
    if (now - since).total_seconds() >= period:
        return True
    return any(
        since < h.since <= now or (h.until is not None and since < h.until <= now) for h in holds
    )


def budget_seconds(budget_hours: float | None) -> float | None:
    return None if budget_hours is None else budget_hours * SECONDS_PER_HOUR


def seconds_until_spent(
    hours: GPUHours | None, budget_hours: float, holds: Iterable[Holding], ratio: float = 1.0
) -> float | None:
    """Seconds until ``ratio`` of the budget is spent at the current rate (None: nothing is
    held, or that share is spent already)."""
    rate = gpus_held(holds)
    used = hours.allocated if hours is not None else 0.0
    left = (budget_hours * ratio - used) * SECONDS_PER_HOUR
    if rate <= 0 or left <= 0:
        return None
    return left / rate
