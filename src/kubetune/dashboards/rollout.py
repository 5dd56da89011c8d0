"""ModelRollouts: where a canary stands (weight, phase, why it is paused) and why it moves
(analysis verdicts, rollbacks, promotions).

Every rollout series is per rollout (``namespace`` and ``modelrollout`` labels). The gauges
(weight, phase, paused) are read from the replica holding the lease, like the job-level
gauges; the counters (``kubetune_rollout_{measurements,aborts,promotions}_total``) are
summed over replicas (a standby's copy never moves). Most panels show the selected rollout;
the panels named "in the namespace" compare its neighbours. The single measurements live in
``status.measurements`` (``kubectl describe mro``), which the links and descriptions point at.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_builder
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common as common_model
from grafana_foundation_sdk.models import dashboard as dashboard_model

from kubetune.dashboards.common import (
    COUNT,
    EVENT_WINDOW,
    OPERATOR_JOB,
    RATIO,
    PanelBuilder,
    Query,
    bargauge,
    leader_only,
    new_dashboard,
    query_variable,
    stat,
    timeseries,
    with_sections,
)

UID = "kubetune-rollout"
FILENAME = "kubetune-rollout.json"

#: Grafana's unit for 0-100 values (the candidate weight is a percent of the route's traffic).
PERCENT = "percent"
#: Sliding window for analysis measurements: one per metric and interval (typically 30 s to
#: a few minutes apart), so a ``$__rate_interval`` window would mostly be empty.
ANALYSIS_WINDOW = "10m"
#: Where a reader finds what the panels only count (status.measurements, status.abort).
DOCS_URL = "https://github.com/kubetune/kubetune/blob/main/docs/rollouts.md"

NS = f'job="{OPERATOR_JOB}", namespace="$namespace"'
ROLLOUT = f'{NS}, modelrollout="$modelrollout"'
WEIGHT = f"kubetune_rollout_candidate_weight{{{ROLLOUT}}}"
PHASE = f"kubetune_rollout_phase{{{ROLLOUT}}}"
PAUSED = f"kubetune_rollout_paused{{{ROLLOUT}}}"
NS_PHASE = f"kubetune_rollout_phase{{{NS}}}"
MEASUREMENTS = f"kubetune_rollout_measurements_total{{{ROLLOUT}}}"
BAD_MEASUREMENTS = f'kubetune_rollout_measurements_total{{{ROLLOUT}, verdict=~"Failed|Error"}}'
INCONCLUSIVE = f'kubetune_rollout_measurements_total{{{ROLLOUT}, verdict="Inconclusive"}}'
ALL_BY_METRIC = f"sum by (metric) (increase({MEASUREMENTS}[{ANALYSIS_WINDOW}]))"
ABORTS = f"kubetune_rollout_aborts_total{{{ROLLOUT}}}"
NS_ABORTS = f"kubetune_rollout_aborts_total{{{NS}}}"
PROMOTIONS = f"kubetune_rollout_promotions_total{{{ROLLOUT}}}"

NAMESPACES_QUERY = f'label_values(kubetune_rollout_phase{{job="{OPERATOR_JOB}"}}, namespace)'
ROLLOUTS_QUERY = f"label_values(kubetune_rollout_phase{{{NS}}}, modelrollout)"

#: Said on every panel that counts the selected rollout's measurements or outcomes.
DETAILS = " Each measurement: `kubectl describe mro -n NAMESPACE NAME` (status.measurements)."


def _now() -> list[PanelBuilder]:
    return [
        stat(
            "Phase",
            "The selected rollout's phase: Pending, Progressing, Paused (why: the Pause reason "
            "panel), Promoted, RolledBack or Failed.",
            COUNT,
            [Query(f"max by (phase) ({leader_only(PHASE)}) == 1", "{{phase}}", instant=True)],
        ).text_mode(common_model.BigValueTextMode.NAME),
        stat(
            "Candidate weight",
            "Percent of the route's traffic the selected rollout last set for its candidate "
            "(the baseline gets the rest).",
            PERCENT,
            [Query(f"max({leader_only(WEIGHT)})")],
        ),
        stat(
            "Measurements",
            "The selected rollout's analysis measurements over the selected time range." + DETAILS,
            COUNT,
            [Query(f"sum(increase({MEASUREMENTS}[$__range]))")],
            decimals=0,
        ),
        stat(
            "Failed or error measurements",
            "The selected rollout's measurements over the selected time range that failed "
            "their limit or whose query errored." + DETAILS,
            COUNT,
            [Query(f"sum(increase({BAD_MEASUREMENTS}[$__range]))")],
            thresholds=((None, "green"), (1, "orange")),
            decimals=0,
        ),
        stat(
            "Rollbacks",
            "Rollbacks of the selected rollout over the selected time range (any reason)."
            + DETAILS,
            COUNT,
            [Query(f"sum(increase({ABORTS}[$__range]))")],
            thresholds=((None, "green"), (1, "red")),
            decimals=0,
        ),
        stat(
            "Promotions",
            "Promotions of the selected rollout's candidate to 100 % of the traffic over the "
            "selected time range." + DETAILS,
            COUNT,
            [Query(f"sum(increase({PROMOTIONS}[$__range]))")],
            decimals=0,
        ),
    ]


def _traffic() -> list[PanelBuilder]:
    return [
        timeseries(
            "Candidate weight over time",
            "Percent of the route's traffic sent to the selected rollout's candidate. It moves "
            "in steps (spec.steps setWeight); a drop to 0 is a rollback.",
            PERCENT,
            [Query(f"max({leader_only(WEIGHT)})", "candidate")],
            min_value=0,
            max_value=100,
        ).line_interpolation(common_model.LineInterpolation.STEP_AFTER),
        timeseries(
            "Phase over time",
            "The selected rollout's phase: one line per phase, drawn while the rollout is in "
            "it. Why it rolled back: `kubectl describe mro` (status.abort).",
            COUNT,
            [Query(f"max by (phase) ({leader_only(PHASE)}) == 1", "{{phase}}")],
            min_value=0,
            max_value=1,
        ).line_interpolation(common_model.LineInterpolation.STEP_AFTER),
        timeseries(
            "Pause reason",
            "Why the selected rollout is Paused (status.pauseReason), drawn while it is: "
            "PauseStep (a pause step waits for its duration or a person) or "
            "AnalysisInconclusive (an analysis step could not decide; it waits for a person "
            "and alerts after an hour). Nothing drawn: not paused.",
            COUNT,
            [Query(f"max by (reason) ({leader_only(PAUSED)}) == 1", "{{reason}}")],
            min_value=0,
            max_value=1,
        ).line_interpolation(common_model.LineInterpolation.STEP_AFTER),
        timeseries(
            "Rollouts by phase in the namespace",
            "ModelRollouts of the namespace per phase, stacked (`kubectl get mro -n NAMESPACE`).",
            COUNT,
            [Query(f"sum by (phase) ({leader_only(NS_PHASE)})", "{{phase}}")],
            stacked=True,
        ),
        timeseries(
            "Candidate weights in the namespace",
            "The candidate weight of every rollout of the namespace, to compare canaries "
            "sharing a gateway.",
            PERCENT,
            [
                Query(
                    "max by (modelrollout) "
                    f"({leader_only(f'kubetune_rollout_candidate_weight{{{NS}}}')})",
                    "{{modelrollout}}",
                )
            ],
            min_value=0,
            max_value=100,
        ).line_interpolation(common_model.LineInterpolation.STEP_AFTER),
        timeseries(
            "Rollbacks in the namespace",
            f"Rollbacks of every rollout of the namespace in a sliding {EVENT_WINDOW}, by "
            "rollout and reason: which canaries of the namespace fail.",
            COUNT,
            [
                Query(
                    f"sum by (modelrollout, reason) (increase({NS_ABORTS}[{EVENT_WINDOW}]))",
                    "{{modelrollout}} {{reason}}",
                )
            ],
            bars=True,
        ),
    ]


def _analysis() -> list[PanelBuilder]:
    return [
        timeseries(
            "Measurements by metric and verdict",
            f"Analysis measurements in a sliding {ANALYSIS_WINDOW}, per analysis metric and "
            "verdict (Successful, Failed, Inconclusive: no data or too few samples, Error: "
            "the query failed)." + DETAILS,
            COUNT,
            [
                Query(
                    f"sum by (metric, verdict) (increase({MEASUREMENTS}[{ANALYSIS_WINDOW}]))",
                    "{{metric}} {{verdict}}",
                )
            ],
            stacked=True,
        ),
        timeseries(
            "Failed and error measurements by metric",
            f"Measurements that failed their limit or errored, in a sliding {ANALYSIS_WINDOW}. "
            "A metric past its failureLimit (or consecutiveErrorLimit) rolls the rollout back."
            + DETAILS,
            COUNT,
            [
                Query(
                    f"sum by (metric, verdict) (increase({BAD_MEASUREMENTS}[{ANALYSIS_WINDOW}]))",
                    "{{metric}} {{verdict}}",
                )
            ],
            bars=True,
        ),
        timeseries(
            "Inconclusive share by metric",
            f"Inconclusive over all measurements in a sliding {ANALYSIS_WINDOW}, per metric. "
            "Near 100 %: the candidate or the baseline gets too little traffic to decide, and "
            "an analysis step will pause rather than promote." + DETAILS,
            RATIO,
            [
                Query(
                    # a metric never inconclusive has no such series: 0 %, not no line
                    f"(sum by (metric) (increase({INCONCLUSIVE}[{ANALYSIS_WINDOW}])) "
                    f"or 0 * {ALL_BY_METRIC}) / {ALL_BY_METRIC}",
                    "{{metric}}",
                )
            ],
            min_value=0,
            max_value=1,
        ),
        bargauge(
            "Measurements by verdict",
            "The selected rollout's measurements over the selected time range, by verdict."
            + DETAILS,
            COUNT,
            [
                Query(
                    f"sum by (verdict) (increase({MEASUREMENTS}[$__range]))",
                    "{{verdict}}",
                    instant=True,
                )
            ],
            min_value=0,
        ),
    ]


def _outcomes() -> list[PanelBuilder]:
    return [
        timeseries(
            "Rollbacks by reason",
            f"Rollbacks of the selected rollout in a sliding {EVENT_WINDOW}, by reason "
            "(MetricFailed, SequentialTestWorse, QueryErrors, ProgressDeadlineExceeded, "
            "AbortedByUser). Which metric: status.abort in `kubectl describe mro`." + DETAILS,
            COUNT,
            [
                Query(
                    f"sum by (reason) (increase({ABORTS}[{EVENT_WINDOW}]))",
                    "{{reason}}",
                )
            ],
            bars=True,
        ),
        timeseries(
            "Promotions over time",
            f"Promotions of the selected rollout's candidate to 100 % of the traffic in a "
            f"sliding {EVENT_WINDOW}." + DETAILS,
            COUNT,
            [Query(f"sum(increase({PROMOTIONS}[{EVENT_WINDOW}]))", "promotions")],
            bars=True,
        ),
        bargauge(
            "Rollbacks by reason in range",
            "Rollbacks of the selected rollout over the selected time range, by reason." + DETAILS,
            COUNT,
            [
                Query(
                    f"sum by (reason) (increase({ABORTS}[$__range]))",
                    "{{reason}}",
                    instant=True,
                )
            ],
            thresholds=((None, "green"), (1, "red")),
            min_value=0,
        ),
    ]


def _links() -> list[cogbuilder.Builder[dashboard_model.DashboardLink]]:
    return [
        dashboard_builder.DashboardLink("ModelRollout docs: status and measurements")
        .type(dashboard_model.DashboardLinkType.LINK)
        .url(f"{DOCS_URL}#status")
        .tooltip(
            "Every measurement (metric, verdict, both values, the limit, the reason) is in "
            "status.measurements: kubectl describe mro -n NAMESPACE NAME"
        )
        .icon("doc")
        .target_blank(True),
        dashboard_builder.DashboardLink("kubetune dashboards")
        .type(dashboard_model.DashboardLinkType.DASHBOARDS)
        .tags(["kubetune"])
        .as_dropdown(True)
        .keep_time(True),
    ]


def build() -> dashboard_model.Dashboard:
    """The ModelRollout dashboard."""
    dashboard = (
        new_dashboard(
            UID,
            "kubetune / Model rollouts",
            "ModelRollouts: candidate weight, phase and pause reason of one rollout, its "
            "analysis measurements by metric and verdict, its rollbacks by reason and "
            "promotions, and its neighbours in the namespace. Each measurement in detail: "
            "kubectl describe mro (status.measurements).",
            tags=["rollout"],
        )
        .with_variable(
            query_variable(
                "namespace",
                "Namespace",
                NAMESPACES_QUERY,
                "Namespace of the ModelRollout.",
            )
        )
        .with_variable(
            query_variable(
                "modelrollout",
                "ModelRollout",
                ROLLOUTS_QUERY,
                "The ModelRollout's name (all panels but those in the namespace).",
            )
        )
        .links(_links())
    )
    return with_sections(
        dashboard,
        [
            ("Now", _now()),
            ("Traffic and phase", _traffic()),
            ("Analysis", _analysis()),
            ("Rollbacks and promotions", _outcomes()),
        ],
    )
