"""The operator's health: is it up, who leads, does it keep up, does the API server
answer it.

All series come from the ``kubetune-operator`` scrape job; per-replica panels are by
``instance`` so a stuck standby or a second leader shows up as its own line.
"""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dashboard_model

from kubetune.dashboards.common import (
    COUNT,
    OPERATOR_JOB,
    PER_SECOND,
    RATIO,
    REQUESTS_PER_SECOND,
    SECONDS,
    PanelBuilder,
    Query,
    histogram_quantiles,
    new_dashboard,
    stat,
    timeseries,
    with_sections,
)

UID = "kubetune-operator"
FILENAME = "kubetune-operator.json"

SEL = f'job="{OPERATOR_JOB}"'
API_REQUESTS = f"kubetune_operator_api_requests_total{{{SEL}}}"
API_ERRORS = f'kubetune_operator_api_requests_total{{{SEL}, code!~"2.."}}'


def _m(metric: str) -> str:
    """``metric`` from the operator's scrape job."""
    return f"{metric}{{{SEL}}}"


def _replicas() -> list[PanelBuilder]:
    return [
        stat(
            "Replicas up",
            "Operator replicas Prometheus can scrape. 0 = the operator is down.",
            COUNT,
            [Query(f"sum({_m('up')})")],
            thresholds=((None, "red"), (1, "green")),
        ),
        stat(
            "Leaders",
            "Replicas holding the leader lease: exactly 1 is healthy; 0 = nobody "
            "reconciles; 2 = split brain.",
            COUNT,
            [Query(f"sum({_m('kubetune_operator_leader')})")],
            thresholds=((None, "red"), (1, "green"), (2, "red")),
        ),
        stat(
            "Reconciles/s",
            "FineTuneJob reconciles per second, all replicas.",
            PER_SECOND,
            [
                Query(
                    f"sum(rate({_m('kubetune_reconcile_duration_seconds_count')}"
                    "[$__rate_interval]))"
                )
            ],
        ),
        stat(
            "Reconcile error ratio",
            "Failed reconciles over all reconciles in the selected time range.",
            RATIO,
            [
                Query(
                    f"sum(increase({_m('kubetune_reconcile_errors_total')}[$__range])) / "
                    f"sum(increase({_m('kubetune_reconcile_duration_seconds_count')}"
                    "[$__range]))"
                )
            ],
            thresholds=((None, "green"), (0.01, "orange"), (0.1, "red")),
        ),
        stat(
            "Queue depth",
            "FineTuneJobs waiting to be reconciled, all replicas.",
            COUNT,
            [Query(f"sum({_m('kubetune_operator_queue_depth')})")],
        ),
        stat(
            "API error ratio",
            "API server responses other than 2xx over all requests, in the selected range.",
            RATIO,
            [
                Query(
                    f"sum(increase({API_ERRORS}[$__range])) / "
                    f"sum(increase({API_REQUESTS}[$__range]))"
                )
            ],
            thresholds=((None, "green"), (0.05, "orange"), (0.2, "red")),
        ),
        timeseries(
            "Up by replica",
            "1 while Prometheus scrapes the replica successfully.",
            COUNT,
            [Query(_m("up"), "{{instance}}")],
            min_value=0,
            max_value=1,
        ),
        timeseries(
            "Leader by replica",
            "1 while the replica holds the leader lease (or runs standalone).",
            COUNT,
            [Query(_m("kubetune_operator_leader"), "{{instance}}")],
            min_value=0,
            max_value=1,
        ),
    ]


def _reconcile() -> list[PanelBuilder]:
    return [
        timeseries(
            "Reconcile rate",
            "FineTuneJob reconciles per second, per replica (only the leader's moves).",
            PER_SECOND,
            [
                Query(
                    "sum by (instance) "
                    f"(rate({_m('kubetune_reconcile_duration_seconds_count')}"
                    "[$__rate_interval]))",
                    "{{instance}}",
                )
            ],
        ),
        timeseries(
            "Reconcile duration p50/p95",
            "Time to reconcile one FineTuneJob (decide and the API calls it makes).",
            SECONDS,
            histogram_quantiles(
                "kubetune_reconcile_duration_seconds", "$__rate_interval", selector=SEL
            ),
        ),
        timeseries(
            "Reconcile errors",
            "Reconciles that raised, per second, per replica.",
            PER_SECOND,
            [
                Query(
                    "sum by (instance) "
                    f"(rate({_m('kubetune_reconcile_errors_total')}[$__rate_interval]))",
                    "{{instance}}",
                )
            ],
        ),
        timeseries(
            "Queue depth by replica",
            "FineTuneJobs waiting to be reconciled. A growing queue: the operator falls behind.",
            COUNT,
            [Query(_m("kubetune_operator_queue_depth"), "{{instance}}")],
        ),
    ]


def _api() -> list[PanelBuilder]:
    return [
        timeseries(
            "API requests by verb and code",
            "Requests the operator's own client sent to the API server, per second.",
            REQUESTS_PER_SECOND,
            [
                Query(
                    f"sum by (verb, code) (rate({API_REQUESTS}[$__rate_interval]))",
                    "{{verb}} {{code}}",
                )
            ],
        ),
        timeseries(
            "API request latency p50/p95 by verb",
            "Latency of the operator's API requests, by verb.",
            SECONDS,
            histogram_quantiles(
                "kubetune_operator_api_request_duration_seconds",
                "$__rate_interval",
                selector=SEL,
                by=["verb"],
            ),
        ),
        timeseries(
            "API errors by verb and code",
            "Responses other than 2xx per second, by verb, resource and code (409 "
            "conflicts are retried; 403 means missing RBAC).",
            REQUESTS_PER_SECOND,
            [
                Query(
                    f"sum by (verb, resource, code) (rate({API_ERRORS}[$__rate_interval]))",
                    "{{verb}} {{resource}} {{code}}",
                )
            ],
        ),
        timeseries(
            "Progress scrape failures by reason",
            "Failed reads of rank 0's progress document per second (unreachable, http, "
            "redirect, too_large, invalid): that job's progress is unknown, not stalled.",
            PER_SECOND,
            [
                Query(
                    "sum by (reason) "
                    f"(rate({_m('kubetune_progress_scrape_failures_total')}[$__rate_interval]))",
                    "{{reason}}",
                )
            ],
        ),
        timeseries(
            "Status write failures by code",
            "FineTuneJob status writes the API server refused, per second, by HTTP code.",
            PER_SECOND,
            [
                Query(
                    "sum by (code) "
                    f"(rate({_m('kubetune_status_write_failures_total')}[$__rate_interval]))",
                    "{{code}}",
                )
            ],
        ),
    ]


def build() -> dashboard_model.Dashboard:
    """The operator health dashboard."""
    dashboard = new_dashboard(
        UID,
        "kubetune / Operator health",
        "The kubetune operator: replicas up, leader, reconcile rate, duration and errors, "
        "queue depth, API server requests, progress scrapes and status writes.",
        tags=["operator"],
    )
    return with_sections(
        dashboard,
        [
            ("Replicas", _replicas()),
            ("Reconcile", _reconcile()),
            ("API server, progress scrapes and status writes", _api()),
        ],
    )
