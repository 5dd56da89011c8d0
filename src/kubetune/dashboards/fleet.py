"""The fleet overview: what the platform team looks at first.

How many jobs are where in their lifecycle, what GPU time they hold and how much of it
did useful work (goodput), by namespace and queue, how fast gangs get scheduled and
start stepping, why jobs restart or fail, and which jobs are close to their GPU budget.
"""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dashboard_model

from kubetune.dashboards.common import (
    BUDGET_THRESHOLDS,
    COUNT,
    EVENT_WINDOW,
    GOODPUT_THRESHOLDS,
    HOURS,
    RATIO,
    SECONDS,
    PanelBuilder,
    Query,
    bargauge,
    histogram_quantiles,
    leader_only,
    new_dashboard,
    query_variable,
    stat,
    timeseries,
    with_sections,
)

UID = "kubetune-fleet"
FILENAME = "kubetune-fleet.json"

NS = 'namespace=~"$namespace"'
JOBS = f"kubetune_jobs{{{NS}}}"
RUNNING_JOBS = f'kubetune_jobs{{{NS}, phase="Running"}}'
WAITING_PHASES = "Pending|Validating|Queued"
WAITING_JOBS = f'kubetune_jobs{{{NS}, phase=~"{WAITING_PHASES}"}}'
ALLOCATED = f"kubetune_gpu_allocated_seconds_total{{{NS}}}"
PRODUCTIVE = f"kubetune_gpu_productive_seconds_total{{{NS}}}"
JOB_ALLOCATED = f"kubetune_job_gpu_allocated_seconds{{{NS}}}"
JOB_BUDGET = f"kubetune_job_gpu_budget_seconds{{{NS}}}"


def _jobs_now() -> list[PanelBuilder]:
    return [
        stat(
            "Running gangs",
            "FineTuneJobs in phase Running (one gang each), as counted by the leader.",
            COUNT,
            [Query(f"sum({leader_only(RUNNING_JOBS)})")],
        ),
        stat(
            "Waiting jobs",
            f"FineTuneJobs not yet running (phases {WAITING_PHASES.replace('|', ', ')}).",
            COUNT,
            [Query(f"sum({leader_only(WAITING_JOBS)})")],
        ),
        stat(
            "GPUs in use",
            "GPUs held by running gangs now (GPU-seconds allocated per second).",
            COUNT,
            [Query(f"sum(rate({ALLOCATED}[$__rate_interval]))")],
            decimals=1,
        ),
        stat(
            "GPU-hours allocated",
            "GPU-hours held by gangs over the selected time range.",
            HOURS,
            [Query(f"sum(increase({ALLOCATED}[$__range])) / 3600")],
        ),
        stat(
            "Goodput",
            "Productive GPU-hours (steps that were kept, not redone after a restart) over "
            "allocated GPU-hours, over the selected time range.",
            RATIO,
            [
                Query(
                    f"sum(increase({PRODUCTIVE}[$__range])) / sum(increase({ALLOCATED}[$__range]))"
                )
            ],
            thresholds=GOODPUT_THRESHOLDS,
        ),
        stat(
            "Failed jobs",
            "FineTuneJobs that failed over the selected time range (all namespaces).",
            COUNT,
            [Query("sum(increase(kubetune_job_failures_total[$__range]))")],
            thresholds=((None, "green"), (1, "red")),
        ),
    ]


def _jobs_over_time() -> list[PanelBuilder]:
    return [
        timeseries(
            "Jobs by phase",
            "FineTuneJobs per lifecycle phase, stacked (leader's view).",
            COUNT,
            [Query(f"sum by (phase) ({leader_only(JOBS)})", "{{phase}}")],
            stacked=True,
        ),
        timeseries(
            "Running gangs by namespace",
            "Gangs running per namespace, stacked.",
            COUNT,
            [Query(f"sum by (namespace) ({leader_only(RUNNING_JOBS)})", "{{namespace}}")],
            stacked=True,
        ),
    ]


def _gpu_time() -> list[PanelBuilder]:
    return [
        timeseries(
            "GPUs allocated vs productive by namespace",
            "GPU-seconds per second (= GPUs): held by gangs, and spent on steps that were "
            "kept. The gap is restarts, redone steps, start-up and data waits.",
            COUNT,
            [
                Query(
                    f"sum by (namespace) (rate({ALLOCATED}[$__rate_interval]))",
                    "{{namespace}} allocated",
                ),
                Query(
                    f"sum by (namespace) (rate({PRODUCTIVE}[$__rate_interval]))",
                    "{{namespace}} productive",
                ),
            ],
        ),
        timeseries(
            "Goodput by namespace (1h window)",
            "Productive over allocated GPU-seconds in a sliding one-hour window.",
            RATIO,
            [
                Query(
                    f"sum by (namespace) (increase({PRODUCTIVE}[1h])) / "
                    f"sum by (namespace) (increase({ALLOCATED}[1h]))",
                    "{{namespace}}",
                )
            ],
            min_value=0,
            max_value=1,
        ),
        bargauge(
            "GPU-hours by namespace and queue",
            "GPU-hours allocated and productive over the selected range, per namespace "
            'and Kueue queue (queue "" = no queue label).',
            HOURS,
            [
                Query(
                    f"sum by (namespace, queue) (increase({ALLOCATED}[$__range])) / 3600",
                    "{{namespace}}/{{queue}} allocated",
                    instant=True,
                ),
                Query(
                    f"sum by (namespace, queue) (increase({PRODUCTIVE}[$__range])) / 3600",
                    "{{namespace}}/{{queue}} productive",
                    instant=True,
                ),
            ],
        ),
        bargauge(
            "Goodput by namespace and queue",
            "Productive over allocated GPU-hours over the selected range, per namespace "
            "and Kueue queue.",
            RATIO,
            [
                Query(
                    f"sum by (namespace, queue) (increase({PRODUCTIVE}[$__range])) / "
                    f"sum by (namespace, queue) (increase({ALLOCATED}[$__range]))",
                    "{{namespace}}/{{queue}}",
                    instant=True,
                )
            ],
            thresholds=GOODPUT_THRESHOLDS,
            min_value=0,
            max_value=1,
        ),
    ]


def _scheduling_and_failures() -> list[PanelBuilder]:
    return [
        timeseries(
            "Scheduling latency p50/p95",
            f"Per attempt, gang created until all its pods run, over a {EVENT_WINDOW} "
            "sliding window (all namespaces).",
            SECONDS,
            histogram_quantiles("kubetune_job_scheduling_latency_seconds", EVENT_WINDOW),
        ),
        timeseries(
            "Time to first step p50/p95",
            f"Per attempt, gang running until the trainer's first step, over a {EVENT_WINDOW} "
            "sliding window (all namespaces): image pulls, model and data loading.",
            SECONDS,
            histogram_quantiles("kubetune_job_time_to_first_step_seconds", EVENT_WINDOW),
        ),
        timeseries(
            "Gang restarts by reason (per hour)",
            "Gang restarts after retryable failures in a sliding hour, by reason.",
            COUNT,
            [
                Query(
                    f"sum by (reason) (increase(kubetune_job_restarts_total{{{NS}}}[1h]))",
                    "{{reason}}",
                )
            ],
        ),
        timeseries(
            "Failures by reason (per hour)",
            "FineTuneJobs that failed in a sliding hour, by reason (all namespaces).",
            COUNT,
            [
                Query(
                    "sum by (reason) (increase(kubetune_job_failures_total[1h]))",
                    "{{reason}}",
                )
            ],
        ),
    ]


def _budgets() -> list[PanelBuilder]:
    return [
        bargauge(
            "GPU budget use, top 10 jobs",
            "GPU-seconds allocated over the GPU budget, for the ten jobs closest to theirs "
            "(only jobs that set a budget). At 100 % the job checkpoints and stops.",
            RATIO,
            [
                Query(
                    f"topk(10, {leader_only(f'{JOB_ALLOCATED} / {JOB_BUDGET}')})",
                    "{{namespace}}/{{finetunejob}}",
                    instant=True,
                )
            ],
            thresholds=BUDGET_THRESHOLDS,
            min_value=0,
            max_value=1,
        ),
        bargauge(
            "GPU-hours, top 10 jobs",
            "GPU-hours allocated so far to the ten most expensive existing jobs.",
            HOURS,
            [
                Query(
                    f"topk(10, {leader_only(JOB_ALLOCATED)}) / 3600",
                    "{{namespace}}/{{finetunejob}}",
                    instant=True,
                )
            ],
        ),
    ]


def build() -> dashboard_model.Dashboard:
    """The fleet overview dashboard."""
    dashboard = new_dashboard(
        UID,
        "kubetune / Fleet overview",
        "All FineTuneJobs: phases, GPU-hours and goodput by namespace and queue, "
        "scheduling, restarts, failures and budgets.",
        tags=["fleet"],
    ).with_variable(
        query_variable(
            "namespace",
            "Namespace",
            "label_values(kubetune_jobs, namespace)",
            "Namespaces of FineTuneJobs (job-level operator series only).",
            multi=True,
        )
    )
    return with_sections(
        dashboard,
        [
            ("Now", _jobs_now()),
            ("Jobs", _jobs_over_time()),
            ("GPU-hours and goodput", _gpu_time()),
            ("Scheduling, restarts and failures", _scheduling_and_failures()),
            ("Budgets", _budgets()),
        ],
    )
