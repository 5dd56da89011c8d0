"""``kubetune serve MODEL [--adapter DIR]``: a small OpenAI-compatible server on the CPU.

For tests and the local demo only; production serves with vLLM or KServe. It exports
vLLM's metric names with the served model name as ``model_name``, so rollout analysis
queries written for vLLM work against it unchanged (docs/serving.md). The ``--inject-*``
flags make it a deliberately bad candidate and are off by default.

Only light imports at module level: torch and the trainer load when the command runs.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from kubetune.cli.extras import MISSING_EXTRA_EXIT_CODE, require_extra

console = Console(stderr=True)


def default_served_name(model: Path, adapter: Path | None) -> str:
    """The adapter's directory name when there is one, else the model's (vLLM uses the
    model argument as given; a directory name is what a route or a query can name)."""
    return (adapter or model).resolve().name


def serve(
    model: Annotated[
        Path, typer.Argument(help="Base model: a local Hugging Face directory (safetensors).")
    ],
    adapter: Annotated[
        Path | None,
        typer.Option(help="A kubetune adapter output (LoRA/DoRA/prefix/prompt/adapter) to apply."),
    ] = None,
    served_model_name: Annotated[
        str | None,
        typer.Option(
            "--served-model-name",
            help="The `model` of responses and the `model_name` label of every metric "
            "(default: the adapter's, else the model's directory name).",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    max_waiting: Annotated[
        int,
        typer.Option(min=0, help="Requests that may wait behind the running one; more get 503."),
    ] = 16,
    reward_model: Annotated[
        Path | None,
        typer.Option(help="A reward model directory (a kubetune `reward` job output)."),
    ] = None,
    reward_sample_rate: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Share of responses scored by the reward model."),
    ] = 0.0,
    reward_seed: Annotated[int, typer.Option(help="Seed of the reward sampling.")] = 0,
    feedback_log: Annotated[
        Path | None,
        typer.Option(
            "--feedback-log",
            help="Append each /v1/feedback, with the prompt and response it rates, to this "
            "JSONL file (mode 0600; input of `kubetune feedback build`).",
        ),
    ] = None,
    feedback_log_max_mb: Annotated[
        float,
        typer.Option(
            min=0.001, help="Rotate the feedback log (PATH.1, PATH.2, PATH.3) past this size."
        ),
    ] = 64.0,
    inject_latency_seconds: Annotated[
        float,
        typer.Option(min=0.0, help="FAULT INJECTION (tests/demo): seconds added to every request."),
    ] = 0.0,
    inject_error_rate: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="FAULT INJECTION: share of requests failed with 500."),
    ] = 0.0,
    inject_degenerate_rate: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="FAULT INJECTION: share of answers made empty."),
    ] = 0.0,
    fault_seed: Annotated[int, typer.Option(help="Seed of the fault injection.")] = 0,
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch CPU threads (default: torch's choice).")
    ] = None,
    trust_remote_code: Annotated[bool, typer.Option(help="Allow custom model code.")] = False,
) -> None:
    """Serve a model (plus adapter) with OpenAI endpoints and vLLM-named metrics (CPU)."""
    require_extra("trainer", "serve")
    if importlib.util.find_spec("aiohttp") is None:
        console.print("[red]`kubetune serve` needs aiohttp[/red]: pip install aiohttp")
        raise typer.Exit(MISSING_EXTRA_EXIT_CODE)
    import torch

    from kubetune_trainer.errors import ModelUnavailableError
    from kubetune_trainer.serving.app import ModelServer, ServeSettings, run
    from kubetune_trainer.serving.engine import HFEngine
    from kubetune_trainer.serving.faults import FaultSettings
    from kubetune_trainer.serving.reward import RewardScorer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if threads:
        torch.set_num_threads(threads)
    name = served_model_name or default_served_name(model, adapter)
    faults = FaultSettings(
        latency_s=inject_latency_seconds,
        error_rate=inject_error_rate,
        degenerate_rate=inject_degenerate_rate,
        seed=fault_seed,
    )
    if faults.active:
        console.print(f"[yellow]fault injection is ON[/yellow] for {escape(name)}: {faults}")
    try:
        engine = HFEngine(model, adapter, trust_remote_code)
        scorer = RewardScorer(reward_model, trust_remote_code) if reward_model else None
    except ModelUnavailableError as exc:
        console.print(f"[red]error[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    settings = ServeSettings(
        model_name=name,
        max_waiting=max_waiting,
        faults=faults,
        reward_sample_rate=reward_sample_rate,
        reward_seed=reward_seed,
        feedback_log=feedback_log,
        feedback_log_max_bytes=max(1024, int(feedback_log_max_mb * 1024 * 1024)),
    )
    if feedback_log is not None:
        console.print(
            f"feedback is logged with its prompts and responses to {escape(str(feedback_log))}"
        )
    run(ModelServer(engine, settings, scorer), host, port)
