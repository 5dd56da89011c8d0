"""``kubetune dev canary``: watch a ModelRollout promote or roll back a model, locally.

The local demo of the rollout tier (kubetune/devcluster/canary/ does the work): on the
running dev cluster (``kubetune dev cluster up``) it starts a baseline and a candidate
``kubetune serve`` on a tiny model, routes between them by an HTTPRoute, runs simulated
users through the router, and lets the operator's analysis on Prometheus decide. A live
table shows phase, step, weight and the latest measurements; at the end the timeline is
saved as JSON and as a PNG of weights and metrics over time.

What it needs and starts:
- the Gateway API, FineTuneJob and ModelRollout CRDs: installed (left installed);
- Prometheus: the dev one (``kubetune dev prometheus up --scrape-interval 1s``) when it runs
  with the model-server pool and scrapes every 2 s or faster, else a private one in
  ``OUT/prometheus`` (stopped at the end);
- the operator: one is started with the cluster's admin kubeconfig (stopped at the end);
  ``--no-operator`` uses the one you run (it must have started after the CRDs existed).
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from kubetune.cli.extras import require_extra

err = Console(stderr=True, log_path=False)


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}{unit}"
    return f"{value}{unit}"


def live_table(sample: dict[str, Any], scenario: str) -> Table:
    """The live display: rollout state, then per model the Prometheus signals, then the
    latest analysis measurement of each metric."""
    table = Table(
        title=f"canary {scenario} | t={sample['t']:.0f}s | phase {sample['phase'] or '-'} | "
        f"step {sample['step']} | candidate weight {sample['candidate_weight']}%",
        title_justify="left",
    )
    for column in ("model / metric", "p95 s", "errors", "positive", "req/s", "verdict"):
        table.add_column(column)
    for model, m in sorted((sample.get("metrics") or {}).items()):
        table.add_row(
            model,
            _fmt(m.get("p95_latency_s")),
            _fmt(m.get("error_rate")),
            _fmt(m.get("positive_share")),
            _fmt(m.get("requests_per_s")),
            "",
        )
    for metric, m in sorted((sample.get("last_measurements") or {}).items()):
        table.add_row(
            f"[bold]{metric}[/]",
            f"cand {_fmt(m.get('candidate'))}",
            f"base {_fmt(m.get('baseline'))}",
            f"limit {_fmt(m.get('limit'))}",
            f"w {m.get('weight')}",
            str(m.get("verdict")),
        )
    return table


def _prometheus(prometheus_dir: Path | None, out: Path) -> tuple[Any, Any | None]:
    """(server to use, server to stop at the end or None)."""
    from kubetune.devcluster.prometheus import SERVE_JOB, PrometheusServer

    dev = PrometheusServer(prometheus_dir)
    state = dev.running()
    if state is not None:
        config = yaml.safe_load(dev.config_file.read_text())
        interval = str(config["global"].get("scrape_interval", "15s"))
        fast = re.fullmatch(r"(\d+)s", interval) is not None and int(interval[:-1]) <= 2
        has_pool = any(j["job_name"] == SERVE_JOB for j in config["scrape_configs"])
        if fast and has_pool:
            err.print(f"using the dev Prometheus at {state.url}")
            return dev, None
        err.print(
            f"[yellow]the dev Prometheus scrapes every {interval}"
            f"{'' if has_pool else ' without the kubetune-serve pool'}[/]: starting a private "
            "one (`kubetune dev prometheus up --scrape-interval 1s` makes the dev one usable)"
        )
    private = PrometheusServer(out / "prometheus")
    private.up(private.settings(operator_targets=(), scrape_interval="1s"), retention="1d")
    return private, private


def _fail(message: str) -> int:
    err.print(f"[bold red]error:[/] {message}")
    return 1


def canary_cmd(
    scenario: Annotated[
        str,
        typer.Option(help="good | latency | errors | quality | no-traffic (see --help text)."),
    ] = "good",
    out: Annotated[
        Path | None,
        typer.Option(help="Where the timeline JSON and PNG go (default ./canary-SCENARIO)."),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help="The dev cluster (default: $KUBETUNE_STATE_DIR)."),
    ] = None,
    prometheus_dir: Annotated[
        Path | None,
        typer.Option(envvar="KUBETUNE_PROMETHEUS_DIR", help="The dev Prometheus' directory."),
    ] = None,
    operator: Annotated[
        bool, typer.Option("--operator/--no-operator", help="Start an operator for the demo.")
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of the load and the fault injection.")] = 0,
    rate: Annotated[float, typer.Option(min=0.5, help="Requests per second.")] = 6.0,
    interval: Annotated[int, typer.Option(min=5, help="Analysis interval, seconds.")] = 5,
    keep: Annotated[bool, typer.Option(help="Keep the demo namespace afterwards.")] = False,
) -> None:
    """Roll a tuned tiny model out as a canary and watch the analysis promote or abort it.

    Scenarios: good (the tuned LoRA adapter), latency (+1 s per request), errors (50 % HTTP
    500), quality (70 % empty answers, judged by simulated users' feedback), no-traffic.
    """
    require_extra("trainer", "dev canary")
    from kubetune.devcluster import DevCluster, DevClusterError
    from kubetune.devcluster.canary import (
        SCENARIOS,
        CanaryLab,
        CanaryModels,
        LabSettings,
        ensure_crds,
        operator_process,
        write_result,
    )
    from kubetune.devcluster.canary.plot import plot_result
    from kubetune.devcluster.cluster import run_kubectl
    from kubetune.devcluster.gateway import GatewayAPI
    from kubetune.devcluster.versions import cache_dir

    if scenario not in SCENARIOS:
        raise typer.Exit(_fail(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}"))
    out = (out or Path(f"canary-{scenario}")).absolute()
    out.mkdir(parents=True, exist_ok=True)
    cluster = DevCluster(state_dir)
    if not cluster.status().get("running"):
        raise typer.Exit(_fail("no dev cluster running: `kubetune dev cluster up` first"))
    kubeconfig = cluster.kubeconfig
    namespace = f"canary-{scenario}-{uuid.uuid4().hex[:4]}"
    private = None
    try:
        with err.status("Gateway API and ModelRollout CRDs"):
            GatewayAPI(cluster).up(timeout=120)
            ensure_crds(kubeconfig)
        with err.status("Prometheus"):
            prom, private = _prometheus(prometheus_dir, out)
        from kubetune_trainer.assets.canary_models import ensure_models

        with err.status("tiny model and LoRA adapter (trained once, then cached)"):
            models = CanaryModels(*ensure_models(cache_dir() / "canary-models", log=err.print))
        run_kubectl(["create", "namespace", namespace], kubeconfig=kubeconfig)
        state = prom.running()
        assert state is not None
        with contextlib.ExitStack() as stack:
            if operator:
                stack.enter_context(operator_process(kubeconfig, out / "operator.log"))
                err.print(f"operator running (log {out / 'operator.log'})")
            live = stack.enter_context(Live(console=err, refresh_per_second=2))
            lab = CanaryLab(
                kubeconfig,
                namespace,
                state.url,
                prom.file_sd_dir,
                out / "lab",
                models,
                LabSettings(interval_seconds=interval, rate=rate),
                log=lambda m: live.console.print(m),
                on_sample=lambda s: live.update(live_table(s, scenario)),
            )
            result = lab.run(SCENARIOS[scenario], seed=seed)
    except (DevClusterError, OSError) as exc:
        raise typer.Exit(_fail(str(exc))) from exc
    finally:
        if private is not None:
            private.down()
        if not keep:
            run_kubectl(
                ["delete", "namespace", namespace, "--wait=false", "--ignore-not-found"],
                kubeconfig=kubeconfig,
                check=False,
            )
    timeline = write_result(result, out / "timeline.json")
    png = plot_result(result, out / "canary.png")
    colour = "green" if result.correct else "red"
    err.print(
        f"[{colour}]{result.outcome}[/] (expected {result.expected})"
        + (f"; abort: {json.dumps(result.abort)}" if result.abort else "")
    )
    if result.detect_s is not None:
        err.print(
            f"detected {result.detect_s:.1f} s after the fault was first measurable "
            f"({result.detect_s / interval:.2f} analysis intervals)"
        )
    err.print(f"timeline {timeline}\npicture  {png}")
    if not result.correct:
        raise typer.Exit(1)
