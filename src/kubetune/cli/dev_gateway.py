"""``kubetune dev gateway up|status|down``: the Gateway API CRDs on the running dev cluster.

The CRDs are the released standard channel of ``GATEWAY_API_VERSION``
(kubetune/devcluster/data/versions.env), taken from the Gateway API's Go module and cached per
version (kubetune/devcluster/gateway.py). There is no Gateway data plane: ``kubetune dev
router`` serves one HTTPRoute's weighted split.
"""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from kubetune.cli.dev_console import StateDirOpt, err, out
from kubetune.cli.dev_console import fail as _fail
from kubetune.devcluster import DevCluster, DevClusterError
from kubetune.devcluster.gateway import GatewayAPI

app = typer.Typer(
    help="The Gateway API CRDs (HTTPRoute, Gateway, ...) on the running dev cluster.",
    no_args_is_help=True,
)


@app.command("up")
def up_cmd(
    state_dir: StateDirOpt = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the CRDs to be Established.")
    ] = 60,
) -> None:
    """Install (server-side apply) the CRDs; wait until every one is Established."""
    gateway = GatewayAPI(DevCluster(state_dir))
    t0 = time.monotonic()
    try:
        with err.status(f"installing the Gateway API {gateway.version} CRDs"):
            names = gateway.up(timeout=timeout)
    except (DevClusterError, OSError) as exc:
        raise _fail(exc) from exc
    err.print(
        f"[green]gateway api {gateway.version} up[/] ({len(names)} CRDs Established in "
        f"{time.monotonic() - t0:.1f}s)"
    )


@app.command("status")
def status_cmd(
    state_dir: StateDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the installed CRDs; exit 1 unless the required ones are Established."""
    st = GatewayAPI(DevCluster(state_dir)).status()
    if as_json:
        out.print(json.dumps(st, indent=2))
    elif not st["running"]:
        err.print("no dev cluster running")
    elif not st["crds"]:
        err.print(f"no Gateway API CRDs installed (pinned {st['version']})")
    else:
        ready = "[green]ready[/]" if st["ready"] else "[yellow]not ready[/]"
        bundle = ", ".join(st["installed"]) or "unknown bundle"
        out.print(f"{ready} gateway api {bundle} (pinned {st['version']})")
        for name, ok in sorted(st["crds"].items()):
            out.print(f"  {name:<45} {'Established' if ok else 'not Established'}")
    if not st.get("ready"):
        raise typer.Exit(1)


@app.command("down")
def down_cmd(state_dir: StateDirOpt = None) -> None:
    """Delete the Gateway API CRDs (and with them every Gateway API object)."""
    cluster = DevCluster(state_dir)
    if not cluster.is_running():
        raise _fail(DevClusterError(f"no dev cluster is running in {cluster.state_dir}"))
    GatewayAPI(cluster).down()
    err.print("[green]gateway api CRDs removed[/]")
