"""``kubetune feedback build``: training data from served feedback and human reviews.

Reads feedback logs (``kubetune serve --feedback-log``) and review files (JSONL or CSV),
and writes ``preference.jsonl`` (DPO/ORPO/reward) and ``unpaired.jsonl`` (KTO) with a
report of counts (docs/feedback-loop.md). Only light imports at module level: the
builder loads when the command runs.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    help="Turn user feedback and reviews into training data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console(soft_wrap=True)


class PersonalData(StrEnum):
    redact = "redact"
    drop = "drop"
    allow = "allow"


class Conflicts(StrEnum):
    drop = "drop"
    majority = "majority"


@app.command("build")
def build(
    out_dir: Annotated[
        Path,
        typer.Option("--out", help="Directory for preference.jsonl, unpaired.jsonl, report.json."),
    ],
    feedback: Annotated[
        list[Path] | None,
        typer.Option(
            "--feedback",
            exists=True,
            dir_okay=False,
            help="A feedback log of `kubetune serve --feedback-log` (repeat; rotated files too).",
        ),
    ] = None,
    reviews: Annotated[
        list[Path] | None,
        typer.Option(
            "--reviews",
            exists=True,
            dir_okay=False,
            help="A human review file, JSONL or .csv (repeat); reviews outrank served feedback.",
        ),
    ] = None,
    personal_data: Annotated[
        PersonalData,
        typer.Option(
            "--personal-data",
            help="redact: replace personal data in every text; drop: drop rows that hold "
            "any; allow: keep texts as they are.",
        ),
    ] = PersonalData.redact,
    conflicts: Annotated[
        Conflicts,
        typer.Option(
            help="The same prompt and response judged both ways: drop it, or keep the "
            "majority label (a tie is dropped)."
        ),
    ] = Conflicts.drop,
    positive_at: Annotated[
        int, typer.Option(min=2, max=5, help="Scores (1-5) at or above this are desirable.")
    ] = 4,
    negative_at: Annotated[
        int, typer.Option(min=1, max=4, help="Scores (1-5) at or below this are undesirable.")
    ] = 2,
    max_pairs_per_prompt: Annotated[
        int, typer.Option(min=1, help="Preference pairs kept per prompt, widest gaps first.")
    ] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Build preference pairs and KTO examples from feedback logs and review files."""
    from kubetune_trainer.feedback.builder import BuildOptions
    from kubetune_trainer.feedback.builder import build as build_dataset

    if not feedback and not reviews:
        console.print("[red]name at least one --feedback log or --reviews file[/red]")
        raise typer.Exit(2)
    try:
        options = BuildOptions(
            positive_at=positive_at,
            negative_at=negative_at,
            conflicts=conflicts.value,
            personal_data=personal_data.value,
            max_pairs_per_prompt=max_pairs_per_prompt,
        )
        report = build_dataset(out_dir, feedback or [], reviews or [], options)
    except (ValueError, OSError) as exc:
        console.print(f"[red]error[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    if as_json:
        out.print(json.dumps(report.to_json(), indent=2), markup=False, highlight=False)
        return
    table = Table(title=f"kubetune feedback build → {escape(str(out_dir))}")
    table.add_column("what")
    table.add_column("count", justify="right")
    for what, count in report.table():
        table.add_row(escape(what), count)
    out.print(table)
