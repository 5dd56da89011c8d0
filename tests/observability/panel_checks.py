"""Evaluate the chart's dashboards and rules against a real Prometheus, and judge the answers.

The end-to-end test (test_dashboards_and_alerts_e2e.py) drives real training and then asks
Prometheus every question Grafana and the rule evaluator would ask. This module holds the
asking and the bookkeeping, so the test reads as the scenario and its verdicts:

* :func:`evaluate_dashboard` -> one :class:`TargetResult` per panel target: the range
  query's series, or the error Prometheus gave.
* :func:`rule_expressions` -> every alert and recording rule of the rules files, as shipped
  (read at test time, never copied).
* :func:`has_data`: a series counts only with a finite sample (Grafana draws NaN as a gap).
* :func:`preview_panels`: the results in :func:`dashboard_preview.render_preview`'s shape.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from kubetune.dashboards.queries import format_legend, iter_panel_queries
from tests.observability.prometheus_helpers import Prometheus, PromQLError


@dataclasses.dataclass(frozen=True)
class TargetResult:
    """One panel target evaluated over a time range."""

    dashboard: str  # the dashboard's uid
    scope: str  # which run the variables point at ("cluster", "local", "fleet"...)
    panel: str
    expr: str
    legend: str
    series: Sequence[Mapping[str, Any]] = ()
    error: str = ""

    @property
    def has_data(self) -> bool:
        return not self.error and has_data(self.series)


def has_data(series: Iterable[Mapping[str, Any]]) -> bool:
    """True when any series holds a finite sample (range ``values`` or instant ``value``)."""
    for one in series:
        samples = one.get("values") or ([one["value"]] if "value" in one else [])
        if any(math.isfinite(float(v)) for _, v in samples):
            return True
    return False


def load_dashboard(path: Path) -> dict[str, Any]:
    board = json.loads(path.read_text())
    assert isinstance(board, dict) and board.get("uid"), f"{path}: not a dashboard"
    return board


def evaluate_dashboard(
    prom: Prometheus,
    board: Mapping[str, Any],
    *,
    scope: str,
    start: float,
    end: float,
    step: float,
    namespace: str = "default",
    finetunejob: str = "",
) -> list[TargetResult]:
    """Every target of ``board`` with the variables filled in, as a range query over
    [start, end]; a query Prometheus refuses (syntax) or fails (execution) is kept with
    its error instead of raising, so one run reports every broken query at once."""
    results = []
    for query in iter_panel_queries(board, namespace=namespace, finetunejob=finetunejob):
        base = TargetResult(str(board["uid"]), scope, query.panel_title, query.expr, query.legend)
        try:
            series = prom.query_range(query.expr, start, end, step)
        except PromQLError as exc:
            results.append(dataclasses.replace(base, error=str(exc)))
        else:
            results.append(dataclasses.replace(base, series=series))
    return results


@dataclasses.dataclass(frozen=True)
class RuleExpr:
    """One rule of a rules file: an alert (``alert`` set) or a recording rule."""

    file: str
    group: str
    name: str
    expr: str
    is_alert: bool


def rule_expressions(paths: Sequence[Path]) -> list[RuleExpr]:
    """Every rule of the Prometheus rules files ``paths``, in file order."""
    rules = []
    for path in paths:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule["record"]
                rules.append(
                    RuleExpr(path.name, group["name"], name, rule["expr"], "alert" in rule)
                )
    return rules


def unhealthy_rules(groups: Sequence[Mapping[str, Any]]) -> list[str]:
    """Rules of the ``/api/v1/rules`` answer that are not healthy or were never evaluated."""
    bad = []
    for group in groups:
        for rule in group["rules"]:
            never = str(rule.get("lastEvaluation", "")).startswith("0001-01-01")
            if rule.get("health") != "ok" or rule.get("lastError") or never:
                bad.append(
                    f"{group['name']}/{rule['name']}: health={rule.get('health')} "
                    f"lastError={rule.get('lastError')!r} "
                    f"lastEvaluation={rule.get('lastEvaluation')}"
                )
    return bad


def preview_panels(
    results: Iterable[TargetResult], step: float
) -> dict[str, list[tuple[str, list[tuple[float, float]]]]]:
    """{panel title: [(legend, [(t, value), ...]), ...]} in dashboard order, every target
    of a panel together, legends as Grafana would show them ("" for a series without
    labels). Where a series has no sample for more than two ``step``s (a restarted gang's
    new pod loading) a NaN point breaks the line, as Grafana leaves a gap."""
    panels: dict[str, list[tuple[str, list[tuple[float, float]]]]] = {}
    for result in results:
        lines = panels.setdefault(result.panel, [])
        for one in result.series:
            points: list[tuple[float, float]] = []
            for t, v in one.get("values", []):
                if points and float(t) - points[-1][0] > 2 * step:
                    points.append((points[-1][0] + step, math.nan))
                points.append((float(t), float(v)))
            labels = one.get("metric", {})
            legend = format_legend(result.legend, labels) if result.legend or labels else ""
            lines.append((legend, points))
    return panels


def panel_units(board: Mapping[str, Any]) -> dict[str, str]:
    """{panel title: Grafana unit} of the panels (rows included) that declare one."""

    def walk(panels: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels") or [])

    return {
        str(p.get("title", "")): unit
        for p in walk(board.get("panels") or [])
        if (unit := (p.get("fieldConfig") or {}).get("defaults", {}).get("unit"))
    }
