"""``kubetune docs``: documentation pages generated from code (checked for drift in CI)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from kubetune.contract.metrics_doc import METRICS_DOC, render_metrics_doc

app = typer.Typer(help="Generate documentation pages from code.", no_args_is_help=True)
console = Console(stderr=True)


@app.command()
def metrics(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the page.")
    ] = METRICS_DOC,
    check: Annotated[
        bool, typer.Option("--check", help="Fail if the page differs from a fresh generation.")
    ] = False,
) -> None:
    """Write docs/metrics.md from the metrics contract (kubetune.contract.metrics)."""
    text = render_metrics_doc()
    if check:
        if (output.read_text() if output.exists() else "") != text:
            console.print(
                f"[red]{escape(str(output))} is stale[/red]: run `kubetune docs metrics` and "
                "commit the result."
            )
            raise typer.Exit(1)
        console.print(f"[green]{escape(str(output))} is up to date[/green]")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    console.print(f"wrote {escape(str(output))}")
