"""The ``kubetune`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from kubetune.api.crd import CRD_FILENAME, render_crd_yaml
from kubetune.api.validation import load_documents, validate_manifest
from kubetune.cli.dashboards import dashboards as dashboards_command
from kubetune.cli.dev import app as dev_app
from kubetune.cli.docs import app as docs_app
from kubetune.cli.operator import app as operator_app
from kubetune.cli.run import run as run_command

app = typer.Typer(
    name="kubetune",
    help="Distributed LLM fine-tuning on Kubernetes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console(soft_wrap=True)

DEFAULT_CRD_DIR = Path("crds")
#: The Helm chart ships the same CRD (Helm installs ``crds/`` before the templates).
CHART_CRD_DIR = Path("charts/kubetune/crds")


@app.command()
def crd(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Directory to write the CRD into; '-' for stdout."),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Fail if the file differs from a fresh generation.")
    ] = False,
) -> None:
    """Generate the FineTuneJob CRD from the API models."""
    text = render_crd_yaml()
    if output is not None and str(output) == "-":
        out.print(text, end="", markup=False, highlight=False, soft_wrap=True)
        return
    # By default: crds/ and the chart's copy; with --output only that directory.
    targets = (
        [output / CRD_FILENAME]
        if output
        else [
            DEFAULT_CRD_DIR / CRD_FILENAME,
            CHART_CRD_DIR / CRD_FILENAME,
        ]
    )
    if check:
        stale = [t for t in targets if (t.read_text() if t.exists() else "") != text]
        for target in stale:
            console.print(
                f"[red]{escape(str(target))} is stale[/red]: run `kubetune crd` and commit "
                "the result."
            )
        if stale:
            raise typer.Exit(1)
        for target in targets:
            console.print(f"[green]{escape(str(target))} is up to date[/green]")
        return
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        console.print(f"wrote {escape(str(target))}")


@app.command()
def validate(
    paths: Annotated[list[Path], typer.Argument(help="Manifest files or directories.")],
) -> None:
    """Validate FineTuneJob manifests as the API server would, and show warnings.

    Problems are user text (patterns such as ``[a-z0-9]``, ``([prefix/]name)``): they
    are escaped so rich markup never eats their brackets.
    """
    failed = 0
    checked = 0
    for path in paths:
        for name, doc in load_documents(path):
            if not isinstance(doc, dict) or doc.get("kind") != "FineTuneJob":
                continue
            checked += 1
            report = validate_manifest(doc)
            if report.ok:
                out.print(f"[green]✓[/green] {escape(name)}", highlight=False)
            else:
                failed += 1
                out.print(f"[red]✗[/red] {escape(name)}", highlight=False)
                for problem in report.errors:
                    out.print(f"    [red]error[/red]  {escape(str(problem))}", highlight=False)
            for problem in report.warnings:
                out.print(f"    [yellow]warning[/yellow] {escape(str(problem))}", highlight=False)
    if checked == 0:
        console.print("[red]no FineTuneJob manifests found[/red]")
        raise typer.Exit(2)
    if failed:
        raise typer.Exit(1)


app.command(name="run")(run_command)
app.command(name="dashboards")(dashboards_command)
app.add_typer(dev_app, name="dev")
app.add_typer(docs_app, name="docs")
app.add_typer(operator_app, name="operator")


if __name__ == "__main__":
    app()
