"""``kubetune dev loadgen URL``: completion traffic with simulated user feedback.

For rollout tests and the demo (kubetune/devcluster/loadgen.py): requests at a target
rate to a model server or the router in front of several, and a simulated user's
rating of every answer. A progress bar follows runs of more than a few seconds; the
summary (per answering model: responses, degenerate answers, feedback, latencies) is a
table, or JSON with ``--json``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

err = Console(stderr=True, log_path=False)
out = Console(highlight=False, soft_wrap=True)

#: Runs expected to last longer than this get a progress bar.
PROGRESS_AFTER_S = 5.0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def _table(summary: dict[str, Any]) -> Table:
    table = Table(title="load by answering model", title_justify="left")
    table.add_column("model", overflow="fold")
    # "empty" = degenerate answers; "+"/"-" = the simulated users' ratings
    for column in ("answers", "empty", "+", "-"):
        table.add_column(column, justify="right")
    for column in ("p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column, justify="right")
    for name, stats in summary["models"].items():
        lat = stats["latency_s"]
        table.add_row(
            escape(name),
            str(stats["responses"]),
            str(stats["degenerate"]),
            str(stats["positive"]),
            str(stats["negative"]),
            _ms(lat["p50"]),
            _ms(lat["p95"]),
            _ms(lat["p99"]),
        )
    return table


def loadgen(
    url: Annotated[str, typer.Argument(help="Base URL of a model server or the router.")],
    rate: Annotated[float, typer.Option(min=0.001, help="Target requests per second.")] = 2.0,
    duration: Annotated[
        float | None,
        typer.Option(min=0.0, help="Seconds to send for (default 10 without --count)."),
    ] = None,
    count: Annotated[int | None, typer.Option(min=1, help="Requests to send.")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Most requests in flight.")] = 8,
    arrival: Annotated[
        str, typer.Option(help="Inter-arrival times: poisson or fixed.")
    ] = "poisson",
    prompts: Annotated[
        Path | None, typer.Option(help="JSONL file with a 'prompt' per line (default: built in).")
    ] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="max_tokens of every request.")] = 16,
    model: Annotated[
        str | None, typer.Option(help="The `model` field of requests (routers may use it).")
    ] = None,
    satisfied_rate: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="SIMULATED users: chance a non-degenerate answer is rated positive.",
        ),
    ] = 0.8,
    feedback: Annotated[
        bool, typer.Option(help="Post the simulated users' ratings to /v1/feedback.")
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of arrivals, prompts and ratings.")] = 0,
    timeout: Annotated[float, typer.Option(min=0.1, help="Per-request timeout (s).")] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Send completion requests at a rate; simulated users rate every answer."""
    if importlib.util.find_spec("aiohttp") is None:
        err.print("[red]`kubetune dev loadgen` needs aiohttp[/red]: pip install aiohttp")
        raise typer.Exit(69)
    from kubetune.devcluster.loadgen import ResponseRecord, load_prompts, run_load

    if arrival not in ("poisson", "fixed"):
        err.print("[red]--arrival must be poisson or fixed[/red]")
        raise typer.Exit(2)
    if duration is None and count is None:
        duration = 10.0
    try:
        prompt_list = load_prompts(prompts) if prompts else None
    except (OSError, ValueError) as exc:
        err.print(f"[red]error[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    expected = count if count is not None else int((duration or 0) * rate) or 1
    if duration is not None and count is not None:
        expected = min(count, int(duration * rate) or 1)
    show = (expected / rate) > PROGRESS_AFTER_S and not as_json
    progress = Progress(
        TextColumn("load"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not show,
    )
    task = progress.add_task("load", total=expected)

    def advance(_record: ResponseRecord) -> None:
        progress.advance(task)

    with progress:
        report = asyncio.run(
            run_load(
                url,
                rate,
                duration,
                count=count,
                concurrency=concurrency,
                arrival="fixed" if arrival == "fixed" else "poisson",
                prompts=prompt_list,
                max_tokens=max_tokens,
                model=model,
                satisfied_rate=satisfied_rate,
                feedback=feedback,
                seed=seed,
                timeout_s=timeout,
                on_response=advance,
            )
        )
    summary = report.summary()
    if as_json:
        out.print(json.dumps(summary, indent=2), markup=False)
        return
    out.print(_table(summary))
    errors = ", ".join(f"{k}={v}" for k, v in sorted(summary["errors"].items())) or "none"
    out.print(
        f"sent {summary['sent']} in {summary['duration_s']} s "
        f"({summary['achieved_rate']} req/s); succeeded {summary['succeeded']}, "
        f"failed {summary['failed']} ({escape(errors)}); feedback sent "
        f"{summary['feedback_sent']} ({summary['feedback_errors']} failed); "
        "ratings are SIMULATED users."
    )
