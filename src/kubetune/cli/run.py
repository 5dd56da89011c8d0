"""``kubetune run MANIFEST --local``: run a FineTuneJob on this machine, no cluster.

The manifest is validated exactly as the API server would (pydantic + CEL), resolved
with the API's own ``resolve`` for ``--nproc`` local processes (the global batch is
kept when it divides), and handed to the same trainer the cluster runs, through
``torchrun`` (gloo on CPU). ``pvc://<claim>/<path>`` locations map to
``<pvc-root>/<claim>/<path>``, as the operator mounts claims in pods; the local example
manifests' tiny model and sample datasets are created there on first use. A progress
bar follows the trainer's progress document; outputs (adapter or weights, metrics,
evaluation, model card, checkpoints) stay in ``--output-dir``.

Only light imports at module level: the operator image (no torch) still loads the CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kubetune.cli.extras import require_extra
from kubetune.contract import ExitCode, launch_command
from kubetune.contract.display import (
    BEFORE_AFTER_ROWS,
    answer_text,
    duration,
    number,
    prompt_text,
)
from kubetune.contract.env import (
    CACHE_ENV,
    CONFIG_ENV,
    HF_OFFLINE_ENV,
    METRICS_PORT_ENV,
    OUTPUT_ENV,
    PROGRESS_ENV,
    PVC_ROOT_ENV,
    TERMINATION_LOG_ENV,
)
from kubetune.contract.plan import without_plan

console = Console(stderr=True)
DEFAULT_CACHE = Path(".cache") / "kubetune"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _load_job(manifest: Path) -> Any:
    from kubetune.api.validation import load_documents, validate_manifest

    docs = [doc for _, doc in load_documents(manifest) if isinstance(doc, dict)]
    jobs = [doc for doc in docs if doc.get("kind") == "FineTuneJob"]
    if len(jobs) != 1:
        console.print(
            f"[red]{escape(str(manifest))} must contain exactly one FineTuneJob "
            f"(found {len(jobs)})[/red]"
        )
        raise typer.Exit(int(ExitCode.INVALID_CONFIG))
    report = validate_manifest(jobs[0])
    for warning in report.warnings:
        console.print(f"[yellow]warning[/yellow] {escape(str(warning))}", highlight=False)
    if not report.ok or report.job is None:
        for problem in report.errors:
            console.print(f"[red]error[/red] {escape(str(problem))}", highlight=False)
        raise typer.Exit(int(ExitCode.INVALID_CONFIG))
    return report.job


def _seed_fixtures(resolved: Any, pvc_root: Path) -> None:
    from kubetune.api.locations import input_locations
    from kubetune_trainer.assets.fixtures import seed_location

    for uri in input_locations(resolved.spec):
        with console.status(f"preparing {escape(uri)}"):
            note = seed_location(uri, pvc_root)
        if note:
            console.print(f"[dim]{escape(note)}[/dim]")


def _read_progress(progress_file: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(progress_file.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _follow(proc: subprocess.Popen[bytes], progress_file: Path, name: str) -> None:
    """Rich progress bar fed by the trainer's progress document; says once when the run
    resumed from a checkpoint."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[steps]}"),
        TextColumn("{task.fields[details]}"),
        TimeElapsedColumn(),
    )
    announced_resume = False
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(f"{escape(name)}: starting", total=None, details="", steps="")

        def show(doc: dict[str, Any]) -> None:
            nonlocal announced_resume
            resumed = doc.get("resumedFromStep")
            if resumed is not None and not announced_resume:
                announced_resume = True
                bar.console.print(
                    f"resuming from step {resumed} (checkpoint step-{resumed:09d} in the "
                    "output directory; --fresh starts over)",
                    highlight=False,
                )
            details = []
            if doc.get("loss") is not None:
                details.append(f"loss {doc['loss']:.4f}")
            if doc.get("tokensPerSecond"):
                details.append(f"{number(round(doc['tokensPerSecond']))} tok/s")
            if doc.get("etaSeconds") is not None and doc.get("state") == "training":
                details.append(f"eta {duration(doc['etaSeconds'])}")
            total = doc.get("totalSteps") or None
            state = doc.get("state", "?")
            if proc.returncode == ExitCode.RETRYABLE:  # checkpointed and stopped, not failed
                state = "stopped"
            bar.update(
                task,
                description=escape(f"{name}: {state}"),
                total=total,
                completed=doc.get("step", 0),
                steps=f"{doc.get('step', 0)}/{total} steps" if total else "",
                details="  ".join(details),
            )

        while proc.poll() is None:
            time.sleep(0.5)
            if (doc := _read_progress(progress_file)) is not None:
                show(doc)
        if (doc := _read_progress(progress_file)) is not None:  # the final state
            show(doc)


def _summary(output_dir: Path) -> None:
    results_file = output_dir / "eval_results.json"
    if results_file.exists():
        results = json.loads(results_file.read_text())
        if results.get("tuned"):
            table = Table("metric", "base model", "tuned model", title="evaluation")
            base = results.get("base") or {}
            for key, value in results["tuned"].items():
                if isinstance(value, int | float):
                    before = base.get(key)
                    table.add_row(
                        key,
                        number(before) if isinstance(before, int | float) else "-",
                        number(value),
                    )
            console.print(table)
    _gates_summary(output_dir / "evaluation.json")
    _before_after(output_dir / "evaluation.json")
    console.print(
        f"[green]outputs in {escape(str(output_dir))}[/green] "
        f"(model card: {escape(str(output_dir / 'README.md'))})",
        highlight=False,
    )
    curves = output_dir / "training_curves.png"
    if curves.exists():
        console.print(f"training curves: {escape(str(curves))}", highlight=False)


def _before_after(report_file: Path) -> None:
    """A few held-out prompts of each evaluation set, answered by the baseline and the tuned
    model side by side (a tuned answer equal to the reference in green)."""
    if not report_file.exists():
        return
    responses = json.loads(report_file.read_text()).get("responses") or {}
    for name, rows in responses.items():
        table = Table(
            "prompt", "base model", "tuned model", "expected", title=f"before and after: {name}"
        )
        for row in rows[:BEFORE_AFTER_ROWS]:
            tuned = answer_text(row["tuned"])
            right = row["tuned"].strip() == row["reference"].strip()
            table.add_row(
                escape(prompt_text(row["prompt"])),
                escape(answer_text(row["baseline"])),
                f"[green]{escape(tuned)}[/green]" if right else escape(tuned),
                escape(answer_text(row["reference"])),
            )
        console.print(table)


def _gates_summary(report_file: Path) -> None:
    """spec.evaluation's table (metrics vs. baseline with bounds) and the gate verdict."""
    if not report_file.exists():
        return
    report = json.loads(report_file.read_text())

    def fmt(value: Any) -> str:
        return number(value) if isinstance(value, int | float) else "-"

    table = Table(
        "metric", "baseline", "tuned", "delta", "lower", "upper", "n", title="evaluation gates"
    )
    for m in report.get("metrics") or []:
        table.add_row(
            escape(m["name"]),
            *(fmt(m.get(k)) for k in ("baseline", "tuned", "delta", "ciLow", "ciHigh")),
            str(m.get("samples") if m.get("samples") is not None else "-"),
        )
    console.print(table)
    for g in report.get("gates") or []:
        mark = "[green]pass[/green]" if g["passed"] else "[red]FAIL[/red]"
        console.print(
            f"  {mark} {escape(g['metric'])}: {escape(g['rule'])} ({escape(g['message'])})",
            highlight=False,
        )
    colour = "green" if report.get("verdict") == "Passed" else "red"
    console.print(
        f"[{colour}]evaluation {escape(str(report.get('verdict')))}[/{colour}]: "
        f"{escape(str(report.get('message', '')))} (bounds one-sided at "
        f"{report.get('confidence')} confidence; details in {escape(str(report_file))})",
        highlight=False,
    )


def run(
    manifest: Annotated[
        Path, typer.Argument(help="FineTuneJob manifest (YAML).", exists=True, dir_okay=False)
    ],
    local: Annotated[
        bool, typer.Option("--local", help="Run on this machine with torchrun.")
    ] = False,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Local training processes.")] = 2,
    output_dir: Annotated[
        Path | None,
        typer.Option("--output-dir", help="Output directory (default ./runs/<job name>)."),
    ] = None,
    cache_dir: Annotated[
        Path, typer.Option("--cache-dir", help="Cache for local PVC stand-ins and downloads.")
    ] = DEFAULT_CACHE,
    pvc_root: Annotated[
        Path | None,
        typer.Option(
            "--pvc-root", help="Directory standing in for PVCs (default <cache-dir>/pvc)."
        ),
    ] = None,
    validate_only: Annotated[
        bool, typer.Option("--validate-only", help="Only check config, model and data.")
    ] = False,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", min=1, help="Override the step count (smoke runs).")
    ] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Ignore checkpoints in the output directory.")
    ] = False,
    prometheus_file_sd_dir: Annotated[
        Path | None,
        typer.Option(
            "--prometheus-file-sd-dir",
            envvar="KUBETUNE_PROMETHEUS_FILE_SD_DIR",
            help="Register the run's metrics endpoint there for Prometheus while it runs "
            "(`kubetune dev prometheus up` prints it).",
        ),
    ] = None,
) -> None:
    """Run a FineTuneJob (or every stage of a FineTunePipeline) locally: validate, resolve,
    train with torchrun, keep the outputs."""
    if not local:
        console.print(
            "kubetune run needs --local (this command runs jobs on this machine); to run on a "
            "cluster, `kubectl apply -f` the manifest with the operator installed."
        )
        raise typer.Exit(2)
    require_extra("trainer", "run --local")
    cache = cache_dir.resolve()
    pvcs = (pvc_root or cache / "pvc").resolve()
    if _is_pipeline(manifest):
        from kubetune.cli.pipeline_run import run_pipeline

        run_pipeline(
            manifest,
            nproc=nproc,
            cache=cache,
            pvcs=pvcs,
            max_steps=max_steps,
            fresh=fresh,
            validate_only=validate_only,
        )
        return
    job = _load_job(manifest)
    run_job(
        job,
        nproc=nproc,
        out=(output_dir or Path("runs") / str(job.metadata.name)).resolve(),
        cache=cache,
        pvcs=pvcs,
        validate_only=validate_only,
        max_steps=max_steps,
        fresh=fresh,
        prometheus_file_sd_dir=prometheus_file_sd_dir,
    )


def _is_pipeline(manifest: Path) -> bool:
    from kubetune.api.validation import load_documents

    return any(
        isinstance(doc, dict) and doc.get("kind") == "FineTunePipeline"
        for _, doc in load_documents(manifest)
    )


def run_job(
    job: Any,
    *,
    nproc: int,
    out: Path,
    cache: Path,
    pvcs: Path,
    validate_only: bool = False,
    max_steps: int | None = None,
    fresh: bool = False,
    prometheus_file_sd_dir: Path | None = None,
) -> None:
    """Train one validated FineTuneJob here, outputs in ``out`` (raises typer.Exit with the
    trainer's code when it fails)."""
    from kubetune.api.resolve import ResolutionError, resolve

    if max_steps is not None:
        job.spec.hyperparameters.max_steps = max_steps
        job.spec.hyperparameters.epochs = None
    if fresh:
        job.spec.checkpoint.resume = "never"
    try:
        resolved = resolve(job, nodes=1, nproc_per_node=nproc)
    except ResolutionError as exc:
        console.print(f"[red]cannot run locally:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(int(ExitCode.INVALID_CONFIG)) from exc
    if resolved.derived.global_batch_size != job.spec.hyperparameters.global_batch_size:
        console.print(
            f"[yellow]note[/yellow] global batch {job.spec.hyperparameters.global_batch_size} "
            f"rounded to {resolved.derived.global_batch_size} for {nproc} processes"
        )
    name = resolved.name
    out.mkdir(parents=True, exist_ok=True)

    _seed_fixtures(resolved, pvcs)

    config = out / "job.resolved.json"
    config.write_text(resolved.model_dump_json(by_alias=True, indent=2))
    progress_file = out / "progress.json"
    progress_file.unlink(missing_ok=True)
    env = dict(os.environ)
    metrics_port = _free_port()
    env.update(
        {
            CONFIG_ENV: str(config),
            OUTPUT_ENV: str(out),
            PROGRESS_ENV: str(progress_file),
            METRICS_PORT_ENV: str(metrics_port),
            PVC_ROOT_ENV: str(pvcs),
            CACHE_ENV: str(cache),
            TERMINATION_LOG_ENV: str(out / "termination-log"),
            HF_OFFLINE_ENV: "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": env.get(
                "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc))
            ),
        }
    )
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    log_file = logs / ("validate.log" if validate_only else "trainer.log")
    cmd = launch_command(
        nproc, trainer_args=["--validate-only"] if validate_only else [], python=sys.executable
    )
    console.print(
        f"[bold]{escape(name)}[/bold]: method {resolved.spec.method}, {nproc} local "
        f"processes, global batch {resolved.derived.global_batch_size} "
        f"({resolved.derived.gradient_accumulation_steps} accumulation steps); "
        f"log {escape(str(log_file))}"
    )
    scraped: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if prometheus_file_sd_dir is not None and not validate_only:
        from kubetune.devcluster.prometheus import local_run_target

        scraped = local_run_target(prometheus_file_sd_dir, name, f"127.0.0.1:{metrics_port}")
    with scraped, log_file.open("wb") as handle:
        proc = subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT)
        try:
            if validate_only:
                proc.wait()
            else:
                _follow(proc, progress_file, name)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: the trainer checkpoints and stops[/yellow]")
            _wait_through_interrupts(proc)
    code = proc.returncode
    termination = out / "termination-log"
    message = termination.read_text().strip() if termination.exists() else ""
    if code == 0:
        if validate_only:  # the human line; the JSON plan line is for the operator
            human = without_plan(message)
            console.print(f"[green]{escape(human or 'validation passed')}[/green]", highlight=False)
        else:
            _summary(out)
        return
    _report_failure(code, message, log_file)
    raise typer.Exit(code)


def _wait_through_interrupts(proc: subprocess.Popen[bytes]) -> None:
    """Wait for the trainer to finish its checkpoint; more Ctrl-C presses do not abandon it
    (torchrun forwards each to the workers, which are already stopping)."""
    while True:
        try:
            proc.wait()
            return
        except KeyboardInterrupt:
            console.print("[yellow]still stopping: writing the checkpoint[/yellow]")


#: outcomes the trainer explains in its one-paragraph termination message; the log tail
#: (torchrun's worker tracebacks and "Root Cause" dump) adds nothing for them
_EXPLAINED = {
    ExitCode.INVALID_CONFIG,
    ExitCode.INVALID_DATA,
    ExitCode.MODEL_UNAVAILABLE,
    ExitCode.NUMERICAL_DIVERGENCE,
    ExitCode.UNSUPPORTED,
}


#: the termination message starts with the exception class and exit-code name, which the
#: outcome line already says
_ERROR_PREFIX = re.compile(r"^\w+ \([A-Z_]+\): ")


def _report_failure(code: int, message: str, log_file: Path) -> None:
    """One clean message per outcome; the log tail only when the trainer could not say."""
    log_hint = f"full log: {escape(str(log_file))}"
    message = _ERROR_PREFIX.sub("", message, count=1)
    if code == ExitCode.RETRYABLE and message:
        console.print(f"[yellow]stopped[/yellow]: {escape(message)}", highlight=False)
        console.print(
            f"run the same command again to resume (--fresh starts over); {log_hint}",
            highlight=False,
        )
        return
    if code in _EXPLAINED and message:
        reason = ExitCode(code).name.lower().replace("_", " ")
        console.print(f"[red]failed ({reason})[/red]: {escape(message)}", highlight=False)
        console.print(log_hint, highlight=False)
        return
    console.print(
        f"[red]trainer exited with {code}[/red]: {escape(message or '(no message)')}",
        highlight=False,
    )
    tail = log_file.read_text(errors="replace").splitlines()[-15:]
    console.print("\n".join(tail), markup=False, highlight=False)
    console.print(log_hint, highlight=False)
