"""The ``kubetune`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from kubetune.api.crd import render_crds
from kubetune.api.validation import load_documents, validate_manifest
from kubetune.cli.dashboards import dashboards as dashboards_command
from kubetune.cli.dev import app as dev_app
from kubetune.cli.docs import app as docs_app
from kubetune.cli.feedback import app as feedback_app
from kubetune.cli.operator import app as operator_app
from kubetune.cli.plan import plan as plan_command
from kubetune.cli.provenance import app as provenance_app
from kubetune.cli.resolved import (
    ClusterProfiles,
    ProfileFiles,
    ProfileSourceError,
    read_profile_files,
    render_resolved,
    resolve_with_profiles,
)
from kubetune.cli.run import run as run_command
from kubetune.cli.serve import serve as serve_command

#: The kinds ``kubetune validate`` checks; other documents in the same files are skipped.
VALIDATED_KINDS = ("FineTuneJob", "ModelRollout", "FineTunePipeline")

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
        typer.Option("--output", "-o", help="Directory to write the CRDs into; '-' for stdout."),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Fail if a file differs from a fresh generation.")
    ] = False,
) -> None:
    """Generate the CRDs (FineTuneJob, FineTuneProfile, ClusterFineTuneProfile) from the API
    models."""
    files = render_crds()
    if output is not None and str(output) == "-":
        text = "".join(files.values())
        out.print(text, end="", markup=False, highlight=False, soft_wrap=True)
        return
    # By default: crds/ and the chart's copy; with --output only that directory.
    dirs = [output] if output else [DEFAULT_CRD_DIR, CHART_CRD_DIR]
    targets = [(d / name, text) for d in dirs for name, text in files.items()]
    if check:
        stale = [t for t, text in targets if (t.read_text() if t.exists() else "") != text]
        for target in stale:
            console.print(
                f"[red]{escape(str(target))} is stale[/red]: run `kubetune crd` and commit "
                "the result."
            )
        if stale:
            raise typer.Exit(1)
        for target, _ in targets:
            console.print(f"[green]{escape(str(target))} is up to date[/green]")
        return
    for target, text in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        console.print(f"wrote {escape(str(target))}")


@app.command()
def validate(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Manifest files or directories.")
    ] = None,
    filename: Annotated[
        list[Path] | None,
        typer.Option("--filename", "-f", help="Manifest file or directory (as kubectl -f)."),
    ] = None,
    resolved: Annotated[
        bool,
        typer.Option(
            "--resolved",
            help="Print each job fully resolved with its team defaults (FineTuneProfile, "
            "ClusterFineTuneProfile), every value commented with the layer that set it.",
        ),
    ] = False,
    profiles: Annotated[
        list[Path] | None,
        typer.Option(
            "--profiles",
            help="With --resolved: read profiles (and Namespaces, for their labels) from "
            "these YAML files instead of the cluster of the current kubeconfig.",
        ),
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace",
            "-n",
            help="With --resolved: the namespace of jobs that name none (default: default).",
        ),
    ] = None,
    kubeconfig: Annotated[
        Path | None, typer.Option(help="With --resolved: kubeconfig for reading profiles.")
    ] = None,
) -> None:
    """Validate FineTuneJob, ModelRollout and FineTunePipeline manifests as the API server
    would, and show warnings (other kinds in the files are skipped).

    Problems are user text (patterns such as ``[a-z0-9]``, ``([prefix/]name)``): they
    are escaped so rich markup never eats their brackets.
    """
    failed = 0
    checked = 0
    all_paths = [*(paths or []), *(filename or [])]
    if not all_paths:
        console.print("[red]name manifests to validate (paths or -f FILE)[/red]")
        raise typer.Exit(2)
    source: ProfileFiles | ClusterProfiles | None = None
    if resolved:
        try:
            source = read_profile_files(profiles) if profiles else ClusterProfiles(kubeconfig)
        except ProfileSourceError as exc:
            console.print(f"[red]error[/red] {escape(str(exc))}")
            raise typer.Exit(2) from exc
    for path in all_paths:
        for name, doc in load_documents(path):
            if not isinstance(doc, dict) or doc.get("kind") not in VALIDATED_KINDS:
                continue
            checked += 1
            if source is not None and doc.get("kind") == "FineTuneJob":
                failed += not _print_resolved(name, doc, source, namespace)
                continue
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
        console.print("[red]no FineTuneJob or ModelRollout manifests found[/red]")
        raise typer.Exit(2)
    if failed:
        raise typer.Exit(1)


def _print_resolved(
    name: str,
    doc: dict[str, object],
    source: ProfileFiles | ClusterProfiles,
    namespace: str | None,
) -> bool:
    """Resolve one job with its profiles and print it; False if it does not resolve."""
    meta = doc.get("metadata")
    ns = str((meta.get("namespace") if isinstance(meta, dict) else None) or namespace or "default")
    try:
        result = resolve_with_profiles(doc, source.for_namespace(ns), ns)
    except ProfileSourceError as exc:
        console.print(f"[red]✗[/red] {escape(name)}: {escape(str(exc))}")
        return False
    if not result.ok:
        out.print(f"[red]✗[/red] {escape(name)} (resolved in namespace {escape(ns)})")
        for problem in result.errors:
            out.print(f"    [red]error[/red]  {escape(str(problem))}", highlight=False)
        return False
    out.print(render_resolved(name, result), end="", markup=False, highlight=False)
    for problem in result.report.warnings:
        console.print(f"[yellow]warning[/yellow] {escape(str(problem))}", highlight=False)
    return True


app.command(name="plan")(plan_command)
app.command(name="run")(run_command)
app.command(name="serve")(serve_command)
app.command(name="dashboards")(dashboards_command)
app.add_typer(dev_app, name="dev")
app.add_typer(docs_app, name="docs")
app.add_typer(feedback_app, name="feedback")
app.add_typer(operator_app, name="operator")
app.add_typer(provenance_app, name="provenance")


if __name__ == "__main__":
    app()
