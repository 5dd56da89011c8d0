"""Building blocks shared by every kubetune dashboard.

Every panel goes through :func:`timeseries`, :func:`stat` or :func:`bargauge`, so every
panel gets the same things by construction: the ``${datasource}`` variable (on the panel
and on each query), a unit, a description and refIds A, B, ... The unit-test suite
checks the generated JSON for the same properties, so a panel built around these helpers
fails CI rather than shipping without a unit.

Label conventions (see ``kubetune.contract.metrics``): ``namespace`` and ``finetunejob``
on trainer series are added by Prometheus at scrape time; on the operator's job-level
series the operator sets them itself. Operator series without a code-set ``namespace``
(reconcile, latencies, failures) carry the *operator's* namespace, so they are never
filtered by the dashboards' namespace variable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import bargauge as bargauge_builder
from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dashboard_builder
from grafana_foundation_sdk.builders import prometheus
from grafana_foundation_sdk.builders import stat as stat_builder
from grafana_foundation_sdk.builders import timeseries as timeseries_builder
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import common as common_model
from grafana_foundation_sdk.models import dashboard as dashboard_model

from kubetune.contract.metrics import OPERATOR_SCRAPE_JOB, TRAINER_SCRAPE_JOB

#: The Prometheus scrape job names (the ``job`` label), from the metrics contract.
# the scrape job names (the metrics contract owns them)
OPERATOR_JOB = OPERATOR_SCRAPE_JOB
TRAINER_JOB = TRAINER_SCRAPE_JOB

DATASOURCE_VARIABLE = "datasource"
#: Every panel and every query points at the dashboard's datasource variable, so one
#: dashboard works against any Prometheus a Grafana has (no hard-coded datasource uid).
DATASOURCE = dashboard_model.DataSourceRef(type_val="prometheus", uid="${datasource}")

#: Any panel builder (time series, stat, bar gauge): what a dashboard section holds.
PanelBuilder = cogbuilder.Builder[dashboard_model.Panel]

#: Sliding window for per-attempt events (gang scheduled, first step, checkpoint saved):
#: they happen minutes apart, so a ``$__rate_interval`` window would mostly be empty.
EVENT_WINDOW = "1h"

# Grafana unit ids used here (https://grafana.com/docs/grafana/latest/panels-visualizations/).
SECONDS = "s"
BYTES = "bytes"
RATIO = "percentunit"  # 0-1 shown as a percentage
COUNT = "short"
HOURS = "h"
PER_SECOND = "ops"  # events per second
REQUESTS_PER_SECOND = "reqps"
SCIENTIFIC = "sci"


@dataclass(frozen=True)
class Query:
    """One PromQL target: its expression, legend and whether it is an instant query."""

    expr: str
    legend: str = ""
    instant: bool = False


def leader_only(expr: str) -> str:
    """Keep only the series of ``expr`` scraped from the operator that holds the lease.

    Standbys serve the same job-level series but only the leader's move; a standby that
    was leader before a fail-over keeps stale values. Joining on ``instance`` with the
    leader gauge counts each job once.
    """
    return (
        f"({expr}) * on (instance) group_left () "
        f'(max by (instance) (kubetune_operator_leader{{job="{OPERATOR_JOB}"}}) == 1)'
    )


def histogram_quantiles(
    metric: str, window: str, *, selector: str = "", by: Sequence[str] = ()
) -> list[Query]:
    """p50 and p95 of histogram ``metric`` over ``window`` (summed over everything but
    ``le`` and ``by``)."""
    group = ", ".join(["le", *by])
    legend_prefix = " ".join(f"{{{{{label}}}}}" for label in by)
    buckets = f"{metric}_bucket{{{selector}}}" if selector else f"{metric}_bucket"
    return [
        Query(
            f"histogram_quantile({q}, sum by ({group}) (rate({buckets}[{window}])))",
            f"{legend_prefix} p{int(q * 100)}".strip(),
        )
        for q in (0.5, 0.95)
    ]


def datasource_variable() -> dashboard_builder.DatasourceVariable:
    """``$datasource``: any Prometheus datasource of the Grafana."""
    return (
        dashboard_builder.DatasourceVariable(DATASOURCE_VARIABLE)
        .label("Data source")
        .type("prometheus")
        .description("The Prometheus that scrapes the kubetune operator and trainers.")
    )


def query_variable(
    name: str, label: str, query: str, description: str, *, multi: bool = False
) -> dashboard_builder.QueryVariable:
    """A label-values variable refreshed with the time range; ``multi`` adds "All"
    (matching with ``=~``, all = ``.*``)."""
    variable = (
        dashboard_builder.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(dashboard_model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_model.VariableSort.ALPHABETICAL_ASC)
    )
    if multi:
        variable = variable.multi(True).include_all(True).all_value(".*")
    return variable


def _targets(queries: Sequence[Query]) -> list[cogbuilder.Builder[cogvariants.Dataquery]]:
    targets: list[cogbuilder.Builder[cogvariants.Dataquery]] = []
    for index, query in enumerate(queries):
        target = (
            prometheus.Dataquery()
            .expr(query.expr)
            .legend_format(query.legend or "__auto")
            .ref_id(chr(ord("A") + index))
            .datasource(DATASOURCE)
        )
        targets.append(target.instant() if query.instant else target.range())
    return targets


def timeseries(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    width: int = 12,
    height: int = 8,
    stacked: bool = False,
    bars: bool = False,
    min_value: float | None = None,
    max_value: float | None = None,
) -> timeseries_builder.Panel:
    """A time-series panel; ``stacked`` for parts of a whole, ``bars`` for event counts."""
    panel = (
        timeseries_builder.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(height)
        .targets(_targets(queries))
        .legend(
            common_builder.VizLegendOptions()
            .display_mode(common_model.LegendDisplayMode.LIST)
            .placement(common_model.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .fill_opacity(10)
        .span_nulls(False)
    )
    if stacked:
        panel = panel.stacking(
            common_builder.StackingConfig().mode(common_model.StackingMode.NORMAL)
        ).fill_opacity(40)
    if bars:
        panel = panel.draw_style(common_model.GraphDrawStyle.BARS).fill_opacity(80)
    if min_value is not None:
        panel = panel.min(min_value)
    if max_value is not None:
        panel = panel.max(max_value)
    return panel


def _thresholds(steps: Sequence[tuple[float | None, str]]) -> dashboard_builder.ThresholdsConfig:
    return (
        dashboard_builder.ThresholdsConfig()
        .mode(dashboard_model.ThresholdsMode.ABSOLUTE)
        .steps([dashboard_model.Threshold(value=value, color=color) for value, color in steps])
    )


#: Green below 80 %, orange from 80 %, red from 100 % (budget use).
BUDGET_THRESHOLDS: tuple[tuple[float | None, str], ...] = (
    (None, "green"),
    (0.8, "orange"),
    (1.0, "red"),
)
#: Red below 50 %, orange below 80 %, green above (goodput).
GOODPUT_THRESHOLDS: tuple[tuple[float | None, str], ...] = (
    (None, "red"),
    (0.5, "orange"),
    (0.8, "green"),
)


def stat(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    width: int = 4,
    height: int = 4,
    thresholds: Sequence[tuple[float | None, str]] | None = None,
    decimals: int | None = None,
) -> stat_builder.Panel:
    """A single-value panel showing the last value (with a sparkline)."""
    panel = (
        stat_builder.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(height)
        .targets(_targets(queries))
        .graph_mode(common_model.BigValueGraphMode.AREA)
        .color_mode(common_model.BigValueColorMode.VALUE)
        .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    panel = panel.thresholds(_thresholds(thresholds or ((None, "blue"),)))
    if decimals is not None:
        panel = panel.decimals(decimals)
    return panel


def bargauge(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    width: int = 12,
    height: int = 8,
    thresholds: Sequence[tuple[float | None, str]] | None = None,
    min_value: float | None = None,
    max_value: float | None = None,
) -> bargauge_builder.Panel:
    """Horizontal bars, one per series (instant values over the selected range)."""
    panel = (
        bargauge_builder.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(height)
        .targets(_targets(queries))
        .orientation(common_model.VizOrientation.HORIZONTAL)
        .display_mode(common_model.BarGaugeDisplayMode.GRADIENT)
        .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(_thresholds(thresholds or ((None, "blue"),)))
    )
    if min_value is not None:
        panel = panel.min(min_value)
    if max_value is not None:
        panel = panel.max(max_value)
    return panel


def new_dashboard(
    uid: str, title: str, description: str, *, tags: Sequence[str] = ()
) -> dashboard_builder.Dashboard:
    """A dashboard with kubetune's defaults: stable ``uid``, tags, 30 s refresh, last 6 h,
    shared crosshair, and the datasource variable first."""
    return (
        dashboard_builder.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["kubetune", *tags])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .tooltip(dashboard_model.DashboardCursorSync.CROSSHAIR)
        .editable()
        .with_variable(datasource_variable())
    )


def with_sections(
    dashboard: dashboard_builder.Dashboard,
    sections: Sequence[tuple[str, Sequence[PanelBuilder]]],
) -> dashboard_model.Dashboard:
    """Lay ``sections`` out as (expanded) rows of panels and build the dashboard with
    stable panel ids 1, 2, ... in reading order (Grafana keeps links to a panel by id)."""
    for title, panels in sections:
        dashboard = dashboard.with_row(dashboard_builder.Row(title))
        for panel in panels:
            dashboard = dashboard.with_panel(panel)
    model = dashboard.build()
    for number, item in enumerate(model.panels or [], start=1):
        item.id_val = number
    return model
