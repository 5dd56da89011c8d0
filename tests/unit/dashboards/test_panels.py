"""Every panel is usable on any Grafana: a unit, a description, the datasource variable,
stable ids; every series it queries is one the metrics contract promises, with labels the
metric really has."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from kubetune.contract.metrics import ALL_METRICS, SCRAPE_LABELS, MetricSpec
from kubetune.dashboards.queries import metric_names
from kubetune.dashboards.render import render_all

BOARDS: dict[str, dict[str, Any]] = {name: json.loads(text) for name, text in render_all().items()}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SPECS: dict[str, MetricSpec] = {spec.name: spec for spec in ALL_METRICS}
#: Labels every scraped series has besides the contract's own: the scrape's (job,
#: namespace, finetunejob), the target's instance, and le on histogram buckets.
ALWAYS = {*SCRAPE_LABELS, "instance", "le"}


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


ALL_PANELS = [(name, panel) for name, board in BOARDS.items() for panel in panels(board)]
ALL_EXPRS = [
    (name, panel["title"], target["expr"])
    for name, panel in ALL_PANELS
    for target in panel["targets"]
]


def spec_of(series: str) -> MetricSpec | None:
    """The contract entry a series name belongs to (histograms expose _bucket/_sum/_count)."""
    if series in SPECS:
        return SPECS[series]
    for suffix in ("_bucket", "_sum", "_count"):
        base = series.removesuffix(suffix)
        if base != series and base in SPECS and SPECS[base].type == "histogram":
            return SPECS[base]
    return None


def test_three_dashboards_with_stable_uids() -> None:
    assert {b["uid"] for b in BOARDS.values()} == {
        "kubetune-fleet",
        "kubetune-job",
        "kubetune-operator",
        "kubetune-rollout",
    }
    for name, board in BOARDS.items():
        assert board["uid"] == name.removesuffix(".json")
        assert board["description"] and "kubetune" in board["tags"]
        ids = [p["id"] for p in board["panels"]]
        assert ids == list(range(1, len(ids) + 1)), "stable panel ids in reading order"
        titles = [p["title"] for p in panels(board)]
        assert len(titles) == len(set(titles)), f"{name}: titles name preview plots"
        assert len(titles) >= 12


@pytest.mark.parametrize(("board", "panel"), ALL_PANELS, ids=lambda v: str(v)[:40])
def test_panel_has_unit_description_and_the_datasource_variable(
    board: str, panel: dict[str, Any]
) -> None:
    assert panel["fieldConfig"]["defaults"].get("unit"), f"{board}: {panel['title']} has no unit"
    assert len(panel.get("description", "")) > 20
    assert panel["datasource"] == DATASOURCE
    assert panel["targets"], "a panel without a query"
    for target in panel["targets"]:
        assert target["datasource"] == DATASOURCE
        assert target["expr"].strip()
    ref_ids = [t["refId"] for t in panel["targets"]]
    assert len(ref_ids) == len(set(ref_ids))


def test_variables() -> None:
    for name, board in BOARDS.items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        datasource = variables["datasource"]
        assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
        for variable in variables.values():
            if variable["type"] == "query":
                assert variable["datasource"] == DATASOURCE, name
                assert variable["query"].startswith("label_values(")
    job = {v["name"]: v for v in BOARDS["kubetune-job.json"]["templating"]["list"]}
    assert {"namespace", "finetunejob"} <= set(job)
    assert 'namespace="$namespace"' in job["finetunejob"]["query"]
    fleet = {v["name"]: v for v in BOARDS["kubetune-fleet.json"]["templating"]["list"]}
    assert fleet["namespace"]["multi"] and fleet["namespace"]["includeAll"]


@pytest.mark.parametrize(("board", "title", "expr"), ALL_EXPRS, ids=lambda v: str(v)[:40])
def test_queried_series_are_in_the_metrics_contract(board: str, title: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{title}: no metric found in {expr}"
    unknown = {n for n in names if n != "up" and spec_of(n) is None}
    assert not unknown, f"{board} / {title}: not in the metrics contract: {unknown}"
    for series, matchers in re.findall(r"\b([a-z_:][a-z0-9_:]*)\{([^}]*)\}", expr):
        spec = spec_of(series)
        allowed = ALWAYS | set(spec.label_names if spec else ())
        used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
        assert used <= allowed, f"{title}: {series} has no label {used - allowed}"
    grouped = {
        label.strip()
        for labels in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr)
        for label in labels.split(",")
        if label.strip()
    }
    known = ALWAYS | {label for n in names if (s := spec_of(n)) for label in s.label_names}
    assert grouped <= known, f"{title}: grouping by labels no series has: {grouped - known}"


def test_job_dashboard_shows_only_the_selected_job() -> None:
    """Every per-job series is filtered by both variables (else it would sum all jobs)."""
    per_job = {n for n, s in SPECS.items() if s.component == "trainer"} | {
        n for n, s in SPECS.items() if "finetunejob" in s.label_names
    }
    board = BOARDS["kubetune-job.json"]
    checked = 0
    for panel in panels(board):
        for target in panel["targets"]:
            for series, matchers in re.findall(
                r"\b([a-z_:][a-z0-9_:]*)(\{[^}]*\})?", target["expr"]
            ):
                spec = spec_of(series)
                if spec is None or spec.name not in per_job:
                    continue
                checked += 1
                assert 'namespace="$namespace"' in matchers, (panel["title"], series)
                assert 'finetunejob="$finetunejob"' in matchers, (panel["title"], series)
    assert checked >= 25


def test_fleet_filters_namespaced_series_by_the_namespace_variable() -> None:
    namespaced = {n for n, s in SPECS.items() if "namespace" in s.label_names}
    board = BOARDS["kubetune-fleet.json"]
    for panel in panels(board):
        for target in panel["targets"]:
            for series, matchers in re.findall(
                r"\b([a-z_:][a-z0-9_:]*)(\{[^}]*\})?", target["expr"]
            ):
                if series in namespaced:
                    assert 'namespace=~"$namespace"' in matchers, (panel["title"], series)


def test_the_dashboards_cover_what_the_issue_asks() -> None:
    """The panels the platform team, the job owner and the operator's on-call need."""
    wanted = {
        "kubetune-fleet.json": [
            "kubetune_jobs",
            "kubetune_gpu_allocated_seconds_total",
            "kubetune_gpu_productive_seconds_total",
            "kubetune_job_restarts_total",
            "kubetune_job_failures_total",
            "kubetune_job_scheduling_latency_seconds_bucket",
            "kubetune_job_time_to_first_step_seconds_bucket",
            "kubetune_job_gpu_budget_seconds",
        ],
        "kubetune-job.json": [
            "kubetune_trainer_loss",
            "kubetune_trainer_eval_loss",
            "kubetune_trainer_learning_rate",
            "kubetune_trainer_tokens_per_second",
            "kubetune_trainer_samples_per_second",
            "kubetune_trainer_step_duration_seconds_bucket",
            "kubetune_trainer_data_wait_seconds_total",
            "kubetune_trainer_memory_bytes",
            "kubetune_trainer_accelerator_memory_peak_bytes",
            "kubetune_trainer_model_flops_utilization_ratio",
            "kubetune_trainer_grad_norm",
            "kubetune_trainer_skipped_steps_total",
            "kubetune_trainer_checkpoint_duration_seconds_bucket",
            "kubetune_trainer_eta_seconds",
            "kubetune_job_attempts",  # the job's own restarts
            "kubetune_job_gpu_productive_seconds",
        ],
        "kubetune-operator.json": [
            "up",
            "kubetune_operator_leader",
            "kubetune_reconcile_duration_seconds_bucket",
            "kubetune_reconcile_errors_total",
            "kubetune_operator_queue_depth",
            "kubetune_operator_api_requests_total",
            "kubetune_operator_api_request_duration_seconds_bucket",
            "kubetune_progress_scrape_failures_total",
            "kubetune_status_write_failures_total",
        ],
    }
    for name, series in wanted.items():
        used = {n for b, _, expr in ALL_EXPRS if b == name for n in metric_names(expr)}
        assert set(series) <= used, f"{name} lacks {set(series) - used}"
