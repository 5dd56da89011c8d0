"""The ModelRollout dashboard shows one rollout's weight, phase, pause reason, analysis
verdicts, rollbacks and promotions, its neighbours in the namespace, and tells the reader
where the details are."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from kubetune.contract.metrics import ROLLOUT_METRICS
from kubetune.dashboards import rollout
from kubetune.dashboards.render import DASHBOARDS, render_all

BOARD: dict[str, Any] = json.loads(render_all()[rollout.FILENAME])
GAUGES = {m.name for m in ROLLOUT_METRICS if m.type == "gauge"}
SERIES = re.compile(r"\b(kubetune_rollout_[a-z_]+)(\{[^}]*\})?")


def _panels() -> Iterator[dict[str, Any]]:
    for panel in BOARD["panels"]:
        if panel["type"] != "row":
            yield panel


def _by_title() -> dict[str, dict[str, Any]]:
    return {panel["title"]: panel for panel in _panels()}


def test_registered_with_a_stable_uid_and_title() -> None:
    assert DASHBOARDS[rollout.FILENAME] is rollout.build
    assert BOARD["uid"] == "kubetune-rollout"
    assert BOARD["title"] == "kubetune / Model rollouts"
    assert {"kubetune", "rollout"} <= set(BOARD["tags"])


def test_variables_pick_a_namespace_then_a_rollout() -> None:
    variables = {v["name"]: v for v in BOARD["templating"]["list"]}
    assert list(variables) == ["datasource", "namespace", "modelrollout"]
    assert variables["namespace"]["query"].startswith("label_values(kubetune_rollout_phase")
    assert variables["modelrollout"]["query"] == (
        'label_values(kubetune_rollout_phase{job="kubetune-operator", namespace="$namespace"}, '
        "modelrollout)"
    )


def test_every_rollout_metric_is_shown() -> None:
    queried = {
        name for p in _panels() for t in p["targets"] for name, _ in SERIES.findall(t["expr"])
    }
    assert queried == {m.name for m in ROLLOUT_METRICS}


def test_series_are_filtered_by_the_rollout_and_gauges_read_from_the_leader() -> None:
    """Every panel reads the selected rollout, but those "in the namespace", which compare
    its neighbours; gauges are read from the leader, counters summed over replicas."""
    neighbours = 0
    for panel in _panels():
        in_namespace = panel["title"].endswith("in the namespace")
        neighbours += in_namespace
        for target in panel["targets"]:
            expr = target["expr"]
            for name, matchers in SERIES.findall(expr):
                assert 'namespace="$namespace"' in matchers, (panel["title"], name)
                selected = 'modelrollout="$modelrollout"' in matchers
                assert selected != in_namespace, (panel["title"], name)
                if name in GAUGES:
                    assert "kubetune_operator_leader" in expr, panel["title"]
                else:
                    assert "kubetune_operator_leader" not in expr, panel["title"]
                    if not in_namespace:
                        assert "kubectl describe mro" in panel["description"], panel["title"]
    assert neighbours == 3


def test_rollbacks_in_the_namespace_name_the_rollout() -> None:
    target = _by_title()["Rollbacks in the namespace"]["targets"][0]
    assert target["expr"].startswith("sum by (modelrollout, reason) (increase(")
    assert target["legendFormat"] == "{{modelrollout}} {{reason}}"


def test_pause_reason_is_drawn_while_paused() -> None:
    panel = _by_title()["Pause reason"]
    [target] = panel["targets"]
    assert "kubetune_rollout_paused{" in target["expr"]
    assert 'modelrollout="$modelrollout"' in target["expr"]
    assert target["expr"].startswith("max by (reason) (") and target["expr"].endswith("== 1")
    assert target["legendFormat"] == "{{reason}}"
    assert panel["fieldConfig"]["defaults"]["custom"]["lineInterpolation"] == "stepAfter"
    assert "AnalysisInconclusive" in panel["description"]


def test_weight_is_a_step_line_in_percent_and_phase_shows_its_name() -> None:
    panels = _by_title()
    weight = panels["Candidate weight over time"]
    defaults = weight["fieldConfig"]["defaults"]
    assert defaults["unit"] == "percent" and (defaults["min"], defaults["max"]) == (0, 100)
    assert defaults["custom"]["lineInterpolation"] == "stepAfter"
    assert 'modelrollout="$modelrollout"' in weight["targets"][0]["expr"]
    phase = panels["Phase"]
    assert phase["options"]["textMode"] == "name"
    assert phase["targets"][0]["legendFormat"] == "{{phase}}"
    assert phase["targets"][0]["expr"].endswith("== 1")


def test_measurements_by_metric_and_verdict_and_rollbacks_by_reason() -> None:
    panels = _by_title()
    by_verdict = panels["Measurements by metric and verdict"]["targets"][0]
    assert by_verdict["expr"].startswith("sum by (metric, verdict) (increase(")
    assert by_verdict["legendFormat"] == "{{metric}} {{verdict}}"
    rollbacks = panels["Rollbacks by reason"]["targets"][0]
    assert "kubetune_rollout_aborts_total" in rollbacks["expr"]
    assert rollbacks["legendFormat"] == "{{reason}}"
    assert (
        "kubetune_rollout_promotions_total" in panels["Promotions over time"]["targets"][0]["expr"]
    )


def test_links_lead_to_status_measurements() -> None:
    links = {link["title"]: link for link in BOARD["links"]}
    docs = links["ModelRollout docs: status and measurements"]
    assert docs["url"].endswith("docs/rollouts.md#status")
    assert "kubectl describe mro" in docs["tooltip"]
    assert links["kubetune dashboards"]["tags"] == ["kubetune"]
    assert "kubectl describe mro" in BOARD["description"]
