"""``kubetune plan MANIFEST``: peak GPU memory and time per epoch, before any GPU.

Light imports only (no torch): the plan is arithmetic over the model's config.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kubetune.api.resolve import ResolutionError, resolve
from kubetune.api.validation import load_documents, validate_manifest
from kubetune.contract.display import duration, number
from kubetune.plan.gpus import GIB, GPU_NAMES, gpu_by_name
from kubetune.plan.inputs import dataset_tokens, model_shape
from kubetune.plan.report import Plan, describe_suggestion, make_plan
from kubetune.plan.shape import ShapeError

console = Console(stderr=True)
out = Console(soft_wrap=True)


def plan(
    manifest: Annotated[
        Path, typer.Argument(help="A FineTuneJob manifest (the first in the file).")
    ],
    model_config: Annotated[
        Path | None,
        typer.Option(
            "--model-config",
            help="The model's config.json (or its directory); default: the model location's "
            "own, when it is a local path.",
        ),
    ] = None,
    gpu: Annotated[
        str | None,
        typer.Option(
            help=f"GPU product ({', '.join(GPU_NAMES)}); default: the one "
            "resources.nodeSelector names (nvidia.com/gpu.product).",
        ),
    ] = None,
    tokens_per_second: Annotated[
        float | None,
        typer.Option("--tokens-per-second", min=0.0, help="Measured training tokens/s per GPU."),
    ] = None,
    mfu: Annotated[
        float | None,
        typer.Option(min=0.01, max=1.0, help="Assumed model-FLOPs utilisation (default 0.35)."),
    ] = None,
    epoch_tokens: Annotated[
        int | None,
        typer.Option("--epoch-tokens", min=1, help="Training tokens in one epoch."),
    ] = None,
    pvc_root: Annotated[
        Path | None,
        typer.Option("--pvc-root", help="Directory standing in for PVCs (pvc://claim/path)."),
    ] = None,
    output: Annotated[
        str, typer.Option("--output", "-o", help="table (default) or json.")
    ] = "table",
) -> None:
    """Estimate peak memory per GPU and time per epoch of a FineTuneJob, say whether it
    fits the requested GPUs, and what to change if not."""
    if output not in ("table", "json"):
        console.print("[red]--output must be table or json[/red]")
        raise typer.Exit(2)
    if tokens_per_second is not None and mfu is not None:
        console.print("[red]pass --tokens-per-second or --mfu, not both[/red]")
        raise typer.Exit(2)
    chosen = None
    if gpu is not None:
        chosen = gpu_by_name(gpu)
        if chosen is None:
            console.print(f"[red]unknown GPU {escape(gpu)}[/red]: one of {', '.join(GPU_NAMES)}")
            raise typer.Exit(2)
    doc = next(
        (
            d
            for _, d in load_documents(manifest)
            if isinstance(d, dict) and d.get("kind") == "FineTuneJob"
        ),
        None,
    )
    if doc is None:
        console.print(f"[red]no FineTuneJob in {escape(str(manifest))}[/red]")
        raise typer.Exit(2)
    report = validate_manifest(doc)
    if report.job is None or report.errors:
        for problem in report.errors:
            console.print(f"[red]error[/red] {escape(str(problem))}")
        raise typer.Exit(1)
    try:
        job = resolve(report.job)
        shape = model_shape(job, model_config, pvc_root)
    except (ResolutionError, ShapeError) as exc:
        console.print(f"[red]error[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    tokens, source = (
        (epoch_tokens, "given (--epoch-tokens)")
        if epoch_tokens is not None
        else dataset_tokens(job, pvc_root)
    )
    result = make_plan(
        job,
        shape,
        gpu=chosen,
        tokens_per_second=tokens_per_second,
        mfu=mfu,
        tokens_per_epoch=tokens,
        tokens_source=source,
    )
    if output == "json":
        out.print(json.dumps(plan_document(result), indent=2), markup=False, highlight=False)
        return
    render(result)


def plan_document(p: Plan) -> dict[str, Any]:
    """Everything the table shows, with full precision (bytes, seconds)."""
    doc = p.summary().model_dump(mode="json", by_alias=True, exclude_none=True)
    doc["model"] = {"shape": p.shape.describe(), "parameters": p.memory.parameters}
    doc["trainableParameters"] = p.memory.trainable_parameters
    doc["breakdown"] = [{"name": x.name, "bytes": x.bytes, "how": x.how} for x in p.memory.parts]
    doc["suggestions"] = [
        {"change": s.change, "peakMemoryBytes": s.estimate.peak_bytes, "fit": s.fit}
        for s in p.suggestions
    ]
    if p.smallest_gpu is not None:
        doc["smallestFittingGpu"] = p.smallest_gpu.name
    if p.tokens_source:
        doc["tokensSource"] = p.tokens_source
    if p.epochs is not None and p.epoch_seconds is not None:
        doc["totalSeconds"] = round(p.epoch_seconds * p.epochs, 1)
    return doc


def _gib(value: int) -> str:
    return f"{value / GIB:.2f} GiB"


def render(p: Plan) -> None:
    trained = p.memory.trainable_parameters
    out.print(f"model   {escape(p.shape.describe())}", highlight=False)
    out.print(
        f"        {number(p.memory.parameters)} parameters, {number(trained)} trained",
        highlight=False,
    )
    out.print(f"setup   {escape(p.setup.describe())}", highlight=False)
    table = Table("memory per GPU", "estimate", "how", title=None)
    for part in p.memory.parts:
        table.add_row(part.name, _gib(part.bytes), escape(part.how))
    table.add_row("[bold]peak[/bold]", f"[bold]{_gib(p.memory.peak_bytes)}[/bold]", "")
    out.print(table)
    if p.gpu is not None and p.fit is not None:
        colour = {"fits": "green", "tight": "yellow", "does not fit": "red"}[p.fit]
        out.print(f"GPU     {escape(p.gpu.describe())}: [{colour}]{p.fit}[/{colour}]")
    else:
        smallest = p.smallest_gpu.describe() if p.smallest_gpu else "none of the known GPUs"
        out.print(
            f"GPU     unknown (pass --gpu or set resources.nodeSelector "
            f"nvidia.com/gpu.product); smallest that fits: {escape(smallest)}"
        )
    for i, s in enumerate(p.suggestions, 1):
        out.print(f"  {i}. {escape(describe_suggestion(s))}", highlight=False)
    if p.throughput is None:
        out.print("time    unknown: pass --gpu (for its peak FLOP/s) or --tokens-per-second")
    elif p.epoch_seconds is None:
        out.print(f"time    unknown: {escape(p.tokens_source)}")
    else:
        total = (
            f", {duration(p.epoch_seconds * p.epochs)} for {number(p.epochs)} epochs"
            if p.epochs
            else ""
        )
        out.print(
            f"time    {duration(p.epoch_seconds)} per epoch{total}: "
            f"{number(p.tokens_per_epoch)} tokens ({escape(p.tokens_source)}) at "
            f"{number(round(p.throughput.tokens_per_second_per_gpu))} tokens/s per GPU "
            f"({escape(p.throughput.how)})",
            highlight=False,
        )
    for note in p.memory.notes:
        out.print(f"note    {escape(note)}", highlight=False)
