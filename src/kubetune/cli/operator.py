"""``kubetune operator``: run the operator, print its RBAC.

Flags override ``KUBETUNE_OPERATOR_*`` environment variables, which override defaults
(see :class:`kubetune_operator.settings.OperatorSettings`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kubetune.cli.extras import require_extra
from kubetune_operator.settings import OperatorSettings

app = typer.Typer(
    help="The FineTuneJob operator (kopf).", no_args_is_help=True, pretty_exceptions_enable=False
)


@app.command("run")
def run(
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Namespace to serve (repeat); default: all."),
    ] = None,
    standalone: Annotated[
        bool,
        typer.Option("--standalone", help="No leader election (a single replica)."),
    ] = False,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Port of /metrics and /healthz.")
    ] = None,
    kubeconfig: Annotated[
        Path | None, typer.Option("--kubeconfig", help="Kubeconfig (default: in-cluster).")
    ] = None,
    trainer_image: Annotated[
        str | None, typer.Option("--trainer-image", help="Default trainer image.")
    ] = None,
    lease_namespace: Annotated[
        str | None, typer.Option("--lease-namespace", help="Namespace of the leader Lease.")
    ] = None,
    identity: Annotated[
        str | None, typer.Option("--id", help="Identity in the leader Lease.")
    ] = None,
    log_level: Annotated[str | None, typer.Option("--log-level")] = None,
) -> None:
    """Run the operator until SIGTERM."""
    require_extra("operator", "operator run")
    from kubetune_operator.runner import main

    overrides: dict[str, object] = {
        "namespaces": list(namespace) if namespace else None,
        "metrics_port": metrics_port,
        "kubeconfig": str(kubeconfig) if kubeconfig else None,
        "trainer_image": trainer_image,
        "lease_namespace": lease_namespace,
        "identity": identity,
        "log_level": log_level,
    }
    if standalone:
        overrides["leader_election"] = False
    settings = OperatorSettings.from_env(None, **overrides)
    raise typer.Exit(main(settings))


@app.command("rbac")
def rbac(
    namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--namespace",
            "-n",
            help="A namespace the operator serves (repeat, as for `operator run`): "
            "namespaced rights as Roles there only; default: cluster-wide.",
        ),
    ] = None,
) -> None:
    """Print the least-privilege RBAC manifest the operator needs."""
    from kubetune_operator.rbac import render_rbac

    typer.echo(render_rbac(list(namespace or [])), nl=False)
