"""What every ``kubetune dev ...`` command shares: its consoles, the dev cluster's
``--state-dir`` option and the one way a command fails."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

err = Console(stderr=True, log_path=False)
out = Console(highlight=False, soft_wrap=True)

StateDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="The dev cluster's state directory (default: $KUBETUNE_STATE_DIR or "
        "~/.local/state/kubetune/cluster).",
    ),
]


def fail(exc: Exception) -> typer.Exit:
    """Print ``exc`` as an error; the caller raises the returned exit (status 1)."""
    err.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(1)
