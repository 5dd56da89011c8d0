"""``kubetune dev kueue up|down|status``: Kueue (built from source with the cluster binaries) on
a running dev cluster, with its webhooks reachable from the API server
(kubetune/devcluster/kueue.py). Kueue never starts with the cluster itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kubetune.cli.dev_console import StateDirOpt, err, out
from kubetune.cli.dev_console import fail as _fail
from kubetune.devcluster import DevCluster, DevClusterError
from kubetune.devcluster.kueue import DIR_ENV, KueueRunner

app = typer.Typer(
    help="Kueue (quotas, queues, preemption; built from source) on the running dev cluster.",
    no_args_is_help=True,
)

DirOpt = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        envvar=DIR_ENV,
        help="Kueue's config, certificates and log (default: beside the dev cluster's state "
        "directory, <state-dir>-kueue).",
    ),
]


def _runner(state_dir: Path | None, directory: Path | None) -> KueueRunner:
    return KueueRunner(DevCluster(state_dir), directory)


@app.command("up")
def up_cmd(
    state_dir: StateDirOpt = None,
    directory: DirOpt = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for Kueue to be ready.")] = 180,
) -> None:
    """Install Kueue's CRDs and webhooks and start Kueue; wait until its webhooks answer."""
    runner = _runner(state_dir, directory)
    try:
        with err.status(f"starting kueue {runner.version}"):
            state = runner.up(timeout=timeout)
    except (DevClusterError, OSError) as exc:
        raise _fail(exc) from exc
    err.print(
        f"[green]kueue {state.version} up[/] (webhook {state.webhook}, pid {state.process.pid}, "
        f"log {runner.log_file})"
    )


@app.command("down")
def down_cmd(
    state_dir: StateDirOpt = None,
    directory: DirOpt = None,
    purge: Annotated[
        bool,
        typer.Option("--purge", help="Also delete Kueue's CRDs (every Kueue object) and files."),
    ] = False,
) -> None:
    """Stop Kueue and remove its webhook configurations (the CRDs stay unless --purge)."""
    runner = _runner(state_dir, directory)
    if runner.load_state() is None and not purge:
        err.print(f"no kueue in {runner.dir}")
        return
    if not runner.down(purge=purge):
        raise _fail(DevClusterError(f"could not stop kueue in {runner.dir}"))
    err.print(f"[green]kueue down[/]{' (CRDs and files removed)' if purge else ''}")


@app.command("status")
def status_cmd(
    state_dir: StateDirOpt = None,
    directory: DirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show whether Kueue runs and is ready; exit 1 when it is not running."""
    st = _runner(state_dir, directory).status()
    if as_json:
        out.print(json.dumps(st, indent=2))
    elif not st["running"]:
        err.print(f"no kueue running in {st['dir']}")
    else:
        ready = "[green]ready[/]" if st["ready"] else "[yellow]not ready[/]"
        out.print(f"running {ready} kueue {st['version']} (pid {st['pid']}, {st['webhook']})")
    if not st["running"]:
        raise typer.Exit(1)
