"""``kubetune run PIPELINE.yaml --local``: every stage of a FineTunePipeline, here, in order.

Each stage is built exactly as the operator builds its FineTuneJob
(:func:`kubetune.api.pipeline.stage_job_spec`: defaults, default output, the stage's spec,
inputs wired to upstream outputs) and trained by the same local runner as ``kubetune run
JOB.yaml --local``. A stage writes where its output location says (``pvc://`` mapped under
the pvc root), which is where the next stage's input points, so the wiring is the cluster's.
A stage whose output is already a finished model is skipped, so a re-run after a failure
resumes at the failed stage (which itself resumes from its checkpoints).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kubetune.contract import ExitCode

console = Console(stderr=True)


@dataclass(frozen=True)
class LocalStage:
    """One stage as it runs here."""

    name: str
    job: Any  # the validated FineTuneJob (kubetune.api.job.FineTuneJob)
    output_uri: str
    output_dir: Path
    inputs: dict[str, str]  # input -> upstream stage


def local_dir(uri: str, pvc_root: Path) -> Path:
    """Where ``uri`` lives on this machine (``pvc://c/p`` -> ``<pvc_root>/c/p``); ValueError
    for locations a local run cannot write (s3://)."""
    from kubetune.contract.uris import Scheme, parse_uri

    location = parse_uri(uri)
    local = location.local_path(pvc_root) if location.scheme in (Scheme.PVC, Scheme.FILE) else None
    if local is None:
        raise ValueError(f"{uri}: a local run writes only pvc:// and file locations")
    return Path(local)


def load_pipeline(manifest: Path) -> Any:
    """The one FineTunePipeline in ``manifest``, validated (stages included) or exit 2."""
    from kubetune.api.pipeline_validation import validate_pipeline
    from kubetune.api.validation import load_documents

    docs = [d for _, d in load_documents(manifest) if isinstance(d, dict)]
    found = [d for d in docs if d.get("kind") == "FineTunePipeline"]
    if len(found) != 1:
        console.print(f"[red]{escape(str(manifest))}: expected one FineTunePipeline[/red]")
        raise typer.Exit(int(ExitCode.INVALID_CONFIG))
    pipeline, problems = validate_pipeline(found[0])
    if pipeline is None:
        for problem in problems:
            console.print(f"[red]error[/red] {escape(str(problem))}", highlight=False)
        raise typer.Exit(int(ExitCode.INVALID_CONFIG))
    return pipeline


def plan_local(pipeline: Any, pvc_root: Path) -> list[LocalStage]:
    """Every stage's job, output and inputs, in order (wired to the planned outputs)."""
    from kubetune.api.pipeline import planned_outputs
    from kubetune.api.pipeline_validation import stage_job_manifest
    from kubetune.api.validation import parse_manifest

    outputs = planned_outputs(pipeline.spec)
    stages = []
    for stage in pipeline.spec.stages:
        job = parse_manifest(stage_job_manifest(pipeline, stage, outputs))
        uri = outputs[stage.name]
        stages.append(
            LocalStage(
                stage.name,
                job,
                uri,
                local_dir(uri, pvc_root),
                stage.inputs.named() if stage.inputs else {},
            )
        )
    return stages


def is_complete(output_dir: Path) -> bool:
    """A finished model: the trainer writes lineage.json and the model card last, and a
    local run's progress document says ``done``."""
    if not (output_dir / "lineage.json").is_file() or not (output_dir / "README.md").is_file():
        return False
    progress = output_dir / "progress.json"
    if progress.is_file():
        try:
            return bool(json.loads(progress.read_text()).get("state") == "done")
        except ValueError:
            return False
    return True


def _summary(pipeline_name: str, rows: list[tuple[LocalStage, str, float | None]]) -> None:
    table = Table("stage", "method", "result", "seconds", "output", title=pipeline_name)
    for stage, result, seconds in rows:
        table.add_row(
            escape(stage.name),
            str(stage.job.spec.method),
            result,
            f"{seconds:.0f}" if seconds is not None else "-",
            escape(str(stage.output_dir)),
        )
    console.print(table)


def run_pipeline(
    manifest: Path,
    *,
    nproc: int,
    cache: Path,
    pvcs: Path,
    max_steps: int | None = None,
    fresh: bool = False,
    validate_only: bool = False,
) -> None:
    """Run the stages in order; stop at the first that fails (exit with its code)."""
    from kubetune.cli.run import run_job

    pipeline = load_pipeline(manifest)
    name = str(pipeline.metadata.name)
    try:
        stages = plan_local(pipeline, pvcs)
    except ValueError as exc:
        console.print(f"[red]cannot run locally:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(int(ExitCode.INVALID_CONFIG)) from exc
    for stage in stages:
        wiring = ", ".join(f"{k} <- {v}" for k, v in stage.inputs.items()) or "no inputs"
        console.print(
            f"[bold]{escape(stage.name)}[/bold]: {stage.job.spec.method} ({escape(wiring)}) "
            f"-> {escape(stage.output_uri)}",
            highlight=False,
        )
    if validate_only:
        console.print(f"[green]pipeline {escape(name)} is valid[/green]")
        return
    rows: list[tuple[LocalStage, str, float | None]] = []
    for index, stage in enumerate(stages):
        if not fresh and is_complete(stage.output_dir):
            rows.append((stage, "skipped (complete)", None))
            continue
        console.rule(f"stage {index + 1}/{len(stages)}: {stage.name}")
        started = time.monotonic()
        try:
            run_job(
                stage.job,
                nproc=nproc,
                out=stage.output_dir,
                cache=cache,
                pvcs=pvcs,
                max_steps=max_steps,
                fresh=fresh,
            )
        except typer.Exit as exc:
            rows.append((stage, f"[red]failed ({exc.exit_code})[/red]", time.monotonic() - started))
            rows += [(later, "not run", None) for later in stages[index + 1 :]]
            _summary(name, rows)
            raise
        rows.append((stage, "[green]trained[/green]", time.monotonic() - started))
    _summary(name, rows)
    console.print(f"[green]pipeline {escape(name)} succeeded[/green]")
