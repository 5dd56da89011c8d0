"""``kubetune dev prometheus up|down|status``: a real Prometheus scraping the dev cluster's
trainer pods, the operator and ``kubetune run --local`` runs (kubetune/devcluster/prometheus.py).

``up`` prints shell lines on stdout, so ``eval "$(kubetune dev prometheus up)"`` points the
current shell at it: ``KUBETUNE_PROMETHEUS_URL`` and ``KUBETUNE_PROMETHEUS_FILE_SD_DIR`` (where
``kubetune run --local`` then registers its metrics endpoint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kubetune.cli.dev_console import err, out
from kubetune.cli.dev_console import fail as _fail
from kubetune.devcluster import DevCluster, DevClusterError
from kubetune.devcluster.prometheus import (
    DEFAULT_OPERATOR_TARGET,
    DEFAULT_PORT,
    DEFAULT_SCRAPE_INTERVAL,
    DIR_ENV,
    FILE_SD_ENV,
    OPERATOR_TARGETS_ENV,
    PrometheusServer,
)

app = typer.Typer(
    help="A real Prometheus (built from source) scraping the dev cluster, the operator and "
    "local runs.",
    no_args_is_help=True,
)

DirOpt = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        envvar=DIR_ENV,
        help="Config, data and targets directory (default: beside the dev cluster's state "
        "directory, <state-dir>-prometheus).",
    ),
]


@app.command("up")
def up_cmd(
    directory: DirOpt = None,
    port: Annotated[
        int,
        typer.Option(envvar="KUBETUNE_PROMETHEUS_PORT", help="Listen port (0 = a free one)."),
    ] = DEFAULT_PORT,
    operator: Annotated[
        str,
        typer.Option(
            "--operator",
            envvar=OPERATOR_TARGETS_ENV,
            help="Operator metrics addresses to scrape, comma-separated host:port "
            "(`kubetune operator run --metrics-port`); empty: none.",
        ),
    ] = DEFAULT_OPERATOR_TARGET,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            help="The dev cluster whose trainer pods to discover (default: $KUBETUNE_STATE_DIR "
            "or ~/.local/state/kubetune/cluster).",
        ),
    ] = None,
    kubeconfig: Annotated[
        Path | None,
        typer.Option(help="Discover trainer pods with this kubeconfig instead of the cluster's."),
    ] = None,
    kubernetes: Annotated[
        bool,
        typer.Option(
            "--kubernetes/--no-kubernetes",
            help="Discover trainer pods (default: when the kubeconfig exists).",
        ),
    ] = True,
    scrape_interval: Annotated[
        str, typer.Option(help="Scrape and rule evaluation interval.")
    ] = DEFAULT_SCRAPE_INTERVAL,
    rule_file: Annotated[
        list[Path] | None,
        typer.Option("--rule-file", exists=True, dir_okay=False, help="Rule files to load."),
    ] = None,
    retention: Annotated[str, typer.Option(help="TSDB retention time.")] = "7d",
) -> None:
    """Start Prometheus (or reconfigure the running one) and print its URL as shell lines."""
    server = PrometheusServer(directory)
    if kubernetes and kubeconfig is None:
        candidate = DevCluster(state_dir).kubeconfig
        if candidate.is_file():
            kubeconfig = candidate
        else:
            err.print(f"[dim]no dev cluster kubeconfig at {candidate}: not discovering pods[/]")
    try:
        settings = server.settings(
            operator_targets=[t.strip() for t in operator.split(",") if t.strip()],
            kubeconfig=kubeconfig.absolute() if kubernetes and kubeconfig else None,
            scrape_interval=scrape_interval,
            rule_files=[p.absolute() for p in rule_file or []],
        )
        with err.status("starting prometheus"):
            state = server.up(settings, port=port, retention=retention)
    except (DevClusterError, OSError) as exc:
        raise _fail(exc) from exc
    err.print(
        f"[green]prometheus {state.version} up[/] at {state.url} (config {server.config_file}, "
        f"log {server.log_file})"
    )
    out.print(f"export KUBETUNE_PROMETHEUS_URL={state.url}")
    out.print(f"export {FILE_SD_ENV}={server.file_sd_dir}")


@app.command("down")
def down_cmd(
    directory: DirOpt = None,
    purge: Annotated[bool, typer.Option("--purge", help="Remove the data too.")] = False,
) -> None:
    """Stop Prometheus (its data stays unless --purge)."""
    server = PrometheusServer(directory)
    if server.load_state() is None and not purge:
        err.print(f"no prometheus in {server.dir}")
        return
    if not server.down(purge=purge):
        raise _fail(DevClusterError(f"could not stop prometheus in {server.dir}"))
    err.print(f"[green]prometheus down[/]{f', removed {server.dir}' if purge else ''}")


@app.command("status")
def status_cmd(
    directory: DirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the URL and the targets up per scrape job; exit 1 when it is not running."""
    st = PrometheusServer(directory).status()
    if as_json:
        out.print(json.dumps(st, indent=2))
    elif not st["running"]:
        err.print(f"no prometheus running in {st['dir']}")
    else:
        out.print(f"[green]running[/] {st['url']} (prometheus {st['version']}, pid {st['pid']})")
        for job, counts in sorted(st.get("targets", {}).items()):
            out.print(f"  {job:<20} up {counts.get('up', 0)}  down {counts.get('down', 0)}")
        if st.get("error"):
            err.print(f"[yellow]targets unavailable:[/] {st['error']}")
    if not st["running"]:
        raise typer.Exit(1)
