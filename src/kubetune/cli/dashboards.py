"""``kubetune dashboards``: write the Grafana dashboards, or check them for drift.

Like ``kubetune crd``: the JSON in the chart is generated, never hand-edited, and
``--check`` (run by ``make crd-check`` in CI) fails when the generator changed without
the files being regenerated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from kubetune.cli.extras import require_extra

console = Console(stderr=True)


def dashboards(
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Directory to write into (default: charts/kubetune/files/dashboards).",
        ),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Fail if the files differ from a fresh generation.")
    ] = False,
) -> None:
    """Generate the Grafana dashboards (fleet, per job, operator health) as JSON."""
    require_extra("dev", "dashboards")
    from kubetune.dashboards.render import DASHBOARD_DIR, render_all, stale_files, write_all

    directory = output or DASHBOARD_DIR
    rendered = render_all()
    if check:
        stale = stale_files(directory, rendered)
        for path in stale:
            console.print(
                f"[red]{escape(str(path))} is stale[/red]: run `kubetune dashboards` and "
                "commit the result."
            )
        if stale:
            raise typer.Exit(1)
        console.print(
            f"[green]{len(rendered)} dashboards in {escape(str(directory))} are up to date[/green]"
        )
        return
    for path in write_all(directory, rendered):
        console.print(f"{'wrote' if path.exists() else 'removed'} {escape(str(path))}")
