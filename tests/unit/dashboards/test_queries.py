"""Panel queries with the template variables filled in, as the end-to-end test sends them
to Prometheus, and a real syntax check of every one of them with promtool."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.dashboards.queries import (
    PanelQuery,
    format_legend,
    iter_panel_queries,
    metric_names,
    substitute,
)
from kubetune.dashboards.render import render_all

BOARDS: dict[str, dict[str, Any]] = {n: json.loads(t) for n, t in render_all().items()}


def _all_queries(namespace: str, finetunejob: str, rate_interval: str = "1m") -> list[PanelQuery]:
    return [
        query
        for board in BOARDS.values()
        for query in iter_panel_queries(
            board, namespace=namespace, finetunejob=finetunejob, rate_interval=rate_interval
        )
    ]


def test_every_target_comes_out_with_its_variables_filled_in() -> None:
    targets = sum(
        len(panel.get("targets", [])) for board in BOARDS.values() for panel in board["panels"]
    )
    queries = _all_queries(namespace="local", finetunejob="demo-lora", rate_interval="2m")
    assert len(queries) == targets
    for query in queries:
        assert "$" not in query.expr, query
        assert query.dashboard_uid in {
            "kubetune-fleet",
            "kubetune-job",
            "kubetune-operator",
            "kubetune-rollout",
        }
    job = [q for q in queries if q.dashboard_uid == "kubetune-job"]
    loss = next(q for q in job if q.panel_title == "Training loss")
    assert loss.expr == 'max(kubetune_trainer_loss{namespace="local", finetunejob="demo-lora"})'
    assert loss.legend == "loss"
    step = next(q for q in job if q.panel_title == "Step duration p50/p95")
    assert "[2m]" in step.expr
    fleet_ranges = [q.expr for q in queries if "[1h]" in q.expr and "increase" in q.expr]
    assert fleet_ranges, "$__range defaults to 1h"


def test_row_panels_hidden_targets_and_auto_legends() -> None:
    board = {
        "uid": "b",
        "panels": [
            {
                "type": "timeseries",
                "title": "top",
                "targets": [{"expr": "up", "legendFormat": "__auto"}],
            },
            {
                "type": "row",
                "title": "collapsed",
                "panels": [
                    {
                        "type": "stat",
                        "title": "inside",
                        "targets": [
                            {
                                "expr": 'x{namespace=~"$namespace"}[$__interval]',
                                "legendFormat": "{{pod}}",
                            },
                            {"expr": "hidden", "hide": True},
                        ],
                    }
                ],
            },
        ],
    }
    assert list(iter_panel_queries(board, namespace="a|b", interval="15s")) == [
        PanelQuery("b", "top", "up", ""),
        PanelQuery("b", "inside", 'x{namespace=~"a|b"}[15s]', "{{pod}}"),
    ]


def test_substitute_knows_both_syntaxes_and_refuses_unknown_variables() -> None:
    values = {"a": "1", "ab": "2", "__rate_interval": "1m"}
    assert substitute("$ab ${a} ${a:raw} [$__rate_interval]", values) == "2 1 1 [1m]"
    with pytest.raises(KeyError, match=r"\$nope"):
        substitute('x{l="$nope"}', values)
    extra = list(
        iter_panel_queries(BOARDS["kubetune-job.json"], variables={"finetunejob": "other"})
    )
    assert all('finetunejob="other"' in q.expr for q in extra if "finetunejob=" in q.expr)


def test_metric_names() -> None:
    assert metric_names(
        'histogram_quantile(0.95, sum by (le, verb) (rate(a_bucket{code!~"2.."}[5m])))'
    ) == {"a_bucket"}
    assert metric_names(
        'sum(x) / on (instance) group_left () (max by (instance) (y{job="j"}) == 1) or vector(0)'
    ) == {"x", "y"}
    assert metric_names('count({__name__=~"p|q", namespace="x"})') == {"p", "q"}
    assert metric_names("topk(10, m) / 3600 and bool 1e3") == {"m"}


def test_format_legend() -> None:
    labels = {"__name__": "m", "namespace": "a", "queue": "q"}
    assert format_legend("{{namespace}}/{{ queue }} allocated", labels) == "a/q allocated"
    assert format_legend("{{missing}}x", labels) == "x"
    assert format_legend("", labels) == 'm{namespace="a", queue="q"}'


def _promtool() -> Path | None:
    """A built promtool: the dev tooling's cache, a scratch build, or the PATH."""
    from kubetune.devcluster.versions import Binaries

    candidates = [Binaries.default().path("promtool"), Path("/tmp/prombuild/out/promtool")]
    found = shutil.which("promtool")
    candidates += [Path(found)] if found else []
    return next((c for c in candidates if c.is_file()), None)


def _check_rules(
    promtool: Path, exprs: list[str], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    rules = {
        "groups": [
            {
                "name": "dashboard-queries",
                "rules": [
                    {"record": f"kubetune:dashboard_query:{i}", "expr": expr}
                    for i, expr in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return subprocess.run(
        [str(promtool), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_panel_query_parses_with_promtool(tmp_path: Path) -> None:
    """One recording rule per panel query: `promtool check rules` parses each expression
    with Prometheus's own parser (there is no stand-alone PromQL parse command)."""
    promtool = _promtool()
    if promtool is None:
        pytest.skip("promtool is not built (kubetune dev cluster build prometheus)")
    queries = _all_queries(namespace="team-a", finetunejob="demo")
    result = _check_rules(promtool, [q.expr for q in queries], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(queries)} rules found" in result.stdout
    # ...and the check does catch a broken query.
    broken = _check_rules(promtool, ["sum by (le (rate(x[1m]))"], tmp_path)
    assert broken.returncode != 0


def _query(uid: str, title: str, namespace: str, finetunejob: str = "") -> str:
    """The first query of panel ``title``, with a 5m rate interval and a 1h range."""
    board = next(b for b in BOARDS.values() if b["uid"] == uid)
    queries = iter_panel_queries(
        board, namespace=namespace, finetunejob=finetunejob, rate_interval="5m", range_="1h"
    )
    return next(q.expr for q in queries if q.panel_title == title)


OP = 'job="kubetune-operator"'
TR = 'job="kubetune-trainer", instance="10.0.0.9:8080"'
GPU = f'{OP}, instance="a:8080", namespace="team-a", queue="q"'


def test_panel_queries_compute_the_right_numbers_with_promtool(tmp_path: Path) -> None:
    """Semantics on synthetic series, evaluated by Prometheus's own engine
    (`promtool test rules`): a standby's stale job counts are ignored, goodput is
    productive over allocated, the per-job view shows only the selected job."""
    promtool = _promtool()
    if promtool is None:
        pytest.skip("promtool is not built (kubetune dev cluster build prometheus)")
    series = {
        # leader a and a stale ex-leader b both serve kubetune_jobs
        f'kubetune_operator_leader{{{OP}, instance="a:8080"}}': "1x60",
        f'kubetune_operator_leader{{{OP}, instance="b:8080"}}': "0x60",
        f'kubetune_jobs{{{OP}, instance="a:8080", namespace="team-a", phase="Running"}}': "2x60",
        f'kubetune_jobs{{{OP}, instance="b:8080", namespace="team-a", phase="Running"}}': "5x60",
        f'kubetune_jobs{{{OP}, instance="a:8080", namespace="team-b", phase="Running"}}': "1x60",
        # 2 GPUs held all along, 1.5 of them productive
        f"kubetune_gpu_allocated_seconds_total{{{GPU}}}": "0+120x60",
        f"kubetune_gpu_productive_seconds_total{{{GPU}}}": "0+90x60",
        f'kubetune_trainer_loss{{{TR}, namespace="team-a", finetunejob="demo"}}': "1.5x60",
        f'kubetune_trainer_loss{{{TR}, namespace="team-a", finetunejob="other"}}': "9x60",
    }
    checks = [
        (_query("kubetune-fleet", "Running gangs", namespace="team-a"), "{}", 2),
        (_query("kubetune-fleet", "Running gangs", namespace=".*"), "{}", 3),
        (_query("kubetune-fleet", "Goodput", namespace="team-a"), "{}", 0.75),
        (_query("kubetune-fleet", "GPUs in use", namespace="team-a"), "{}", 2),
        (
            _query("kubetune-job", "Training loss", namespace="team-a", finetunejob="demo"),
            "{}",
            1.5,
        ),
    ]
    spec = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "70m" if "[1h]" in expr else "50m",
                        "exp_samples": [{"labels": labels, "value": value}],
                    }
                    for expr, labels, value in checks
                ],
            }
        ],
    }
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = subprocess.run(
        [str(promtool), "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
