"""``kubetune provenance``: produce the approved-digest allow-list a job's
``spec.dataset.provenance`` requires (docs/provenance.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from kubetune.contract.digest import sha256_path
from kubetune.contract.provenance import (
    DEFAULT_KEY,
    AllowListError,
    ApprovedDigest,
    allow_list_configmap,
    dumps_manifest,
    parse_allow_list,
)

app = typer.Typer(help="Approved data provenance: digest allow-lists.", no_args_is_help=True)
console = Console(stderr=True)


@app.command()
def approve(
    files: Annotated[
        list[Path], typer.Argument(help="Data files or directories to approve.", exists=True)
    ],
    configmap: Annotated[str, typer.Option("--configmap", help="Name of the ConfigMap.")],
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Namespace of the ConfigMap.")
    ] = None,
    key: Annotated[str, typer.Option("--key", help="ConfigMap key of the list.")] = DEFAULT_KEY,
    note: Annotated[
        str | None, typer.Option("--note", help="A note kept with each new entry (a ticket).")
    ] = None,
    merge: Annotated[
        Path | None,
        typer.Option("--merge", help="An existing allow-list (the key's value) to add to."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the manifest here, not stdout.")
    ] = None,
) -> None:
    """Print (or write) a ConfigMap listing the sha256 of each FILE (a directory's digest
    for a directory), for spec.dataset.provenance.allowListRef."""
    entries: dict[str, ApprovedDigest] = {}
    if merge is not None:
        try:
            entries.update(parse_allow_list(merge.read_text(), str(merge)))
        except (AllowListError, OSError) as exc:
            console.print(f"[red]{escape(str(exc))}[/red]")
            raise typer.Exit(1) from exc
    for path in files:
        digest = sha256_path(path)
        entries[digest] = ApprovedDigest(digest, str(path), note)
        console.print(f"{digest}  {escape(str(path))}")
    text = dumps_manifest(
        allow_list_configmap(configmap, entries.values(), namespace=namespace, key=key)
    )
    if output is None:
        sys.stdout.write(text)
        return
    output.write_text(text)
    console.print(f"wrote {escape(str(output))}")
