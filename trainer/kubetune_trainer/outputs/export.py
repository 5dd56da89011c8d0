"""Write the job's outputs (rank 0): weights, merged model, evaluation, lineage, card.

Output directory layout::

    adapter_model.safetensors + adapter_config.json   (PEFT methods)  or
    model.safetensors + config.json                    (full, dpo, reward)
    tokenizer files
    merged/                  base + LoRA folded in (output.mergeAdapter)
    eval_results.json        eval loss/perplexity of tuned vs. base model
    lineage.json, README.md  lineage record and model card
    training_curves.png/.json loss, eval loss, learning rate, tokens/s (curves.py)
    data_report.json         row counts (and data_issues.jsonl with every bad row)
    train_log.jsonl, progress.json, checkpoints/
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kubetune.api.resolve import ResolvedJob
from kubetune_trainer.checkpoint.atomic import write_atomic
from kubetune_trainer.curves import CurveRecorder, write_curves
from kubetune_trainer.data.provenance import provenance_section
from kubetune_trainer.errors import TrainerError
from kubetune_trainer.outputs.lineage import build_lineage, sha256_path, upstream_record
from kubetune_trainer.outputs.model_card import render_model_card
from kubetune_trainer.privacy.report import data_policy_record

if TYPE_CHECKING:
    from torch import nn

    from kubetune_trainer.data.validate import PreparedData
    from kubetune_trainer.methods.base import Method


@dataclass(frozen=True)
class RunSummary:
    """What a finished run did: the facts the lineage record and the model card report."""

    job: ResolvedJob
    output_dir: Path
    steps: int
    planned_steps: int
    epochs: float
    world_size: int
    engine: str
    precision: str
    padding_free: bool
    tokens_seen: int
    samples_seen: int
    final_loss: float | None
    elapsed_seconds: float
    resumed_from: int | None
    skipped_steps: int
    eval_results: dict[str, Any]
    #: the run's curves (rank 0), drawn into the outputs and embedded in the card
    curves: CurveRecorder | None = None
    #: a MoE base's expert load in the last step (kubetune_trainer.moe), for the card
    moe: dict[str, Any] | None = None
    #: spec.differentialPrivacy's settings and the epsilon spent (kubetune_trainer.dp)
    privacy: dict[str, Any] | None = None


def write_outputs(
    run: RunSummary,
    *,
    method: Method,
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    tokenizer: Any,
    model_dir: Path,
    data: PreparedData,
) -> None:
    """Rank 0: weights (and the merged model), evaluation, data report, lineage, card."""
    job, spec = run.job, run.job.spec
    hp = spec.hyperparameters
    out = run.output_dir
    out.mkdir(parents=True, exist_ok=True)
    method.save(model, state_dict, out, tokenizer)
    merged_dir = None
    if spec.output.merge_adapter:
        merged_dir = out / "merged"
        method.merge(model_dir, out, merged_dir, tokenizer)

    write_atomic(
        out / "eval_results.json", json.dumps(run.eval_results, indent=2, default=_nan_safe)
    )
    reports = [r.summary() for r in data.reports]
    write_atomic(out / "data_report.json", json.dumps(reports, indent=2))

    datasets = []
    for split in [data.train] + ([data.eval] if data.eval else []):
        summary = split.report.summary()
        summary["sha256"] = sha256_path(split.files[0]) if split.files else None
        datasets.append(summary)
    lineage = build_lineage(
        job={
            "name": job.name,
            "namespace": job.namespace,
            "attempt": job.attempt,
            "method": spec.method,
            "configHash": job.config_hash(),
            "resolvedJob": json.loads(job.model_dump_json(by_alias=True)),
        },
        base_model={
            "uri": spec.model.uri,
            "revision": spec.model.revision,
            "sha256": sha256_path(model_dir),
        },
        datasets=datasets,
        training={
            "steps": run.steps,
            "plannedSteps": run.planned_steps,
            "epochs": run.epochs,
            "worldSize": run.world_size,
            "engine": run.engine,
            "precision": run.precision,
            "batching": "padding-free (packed, per-sample positions)"
            if run.padding_free
            else "padded to the longest sample of each micro-batch",
            "tokensSeen": run.tokens_seen,
            "samplesSeen": run.samples_seen,
            "finalLoss": run.final_loss,
            "elapsedSeconds": round(run.elapsed_seconds, 3),
            "resumedFromStep": run.resumed_from,
            "skippedSteps": run.skipped_steps,
            "hyperparameters": {
                "learningRate": hp.learning_rate,
                "scheduler": hp.scheduler,
                "warmupRatio": hp.warmup_ratio,
                "weightDecay": hp.weight_decay,
                "globalBatchSize": job.derived.global_batch_size,
                "microBatchSize": hp.micro_batch_size,
                "gradientAccumulationSteps": job.derived.gradient_accumulation_steps,
                "maxSeqLength": spec.dataset.max_seq_length,
                "maxGradNorm": hp.max_grad_norm,
                "seed": hp.seed,
            },
        },
        evaluation=run.eval_results,
        outputs={
            "directory": str(out),
            "weights": sorted(p.name for p in out.glob("*.safetensors")),
            "merged": str(merged_dir) if merged_dir else None,
            "writtenAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    data_policy = data_policy_record(spec.data_policy, data.reports)  # spec.dataPolicy
    personal = (data_policy or {}).get("personalData")
    redactions = (
        {role: split["counts"] for role, split in personal["splits"].items()}
        if personal and personal["action"] == "redact"
        else None
    )
    policy = {"personalData": {k: personal[k] for k in ("action", "kinds")}} if personal else None
    # data provenance: digests, counts, filters, approval, redactions and the data policy
    lineage["provenance"] = provenance_section(job, data, redactions=redactions, policy=policy)
    upstream = _upstream(job, model_dir)
    if upstream:
        lineage["upstream"] = upstream
    if run.moe:
        lineage["moe"] = run.moe
    if run.privacy:
        lineage["differentialPrivacy"] = run.privacy
    if data_policy is not None:
        lineage["dataPolicy"] = data_policy
    title = f"{job.name}: {spec.method}, {run.steps} steps"
    curves = write_curves(run.curves, out, title)
    if curves is not None:
        lineage["curves"] = curves
    write_atomic(out / "lineage.json", json.dumps(lineage, indent=2, default=_nan_safe))
    write_atomic(out / "README.md", render_model_card(lineage))


def _upstream(job: ResolvedJob, model_dir: Path) -> dict[str, Any]:
    """Lineage of the kubetune outputs this job started from or was scored by, by role:
    how a pipeline's stages (SFT -> reward model -> RL) reach the final model card."""
    from kubetune_trainer.models.load import resolve_model_dir

    rlhf = job.spec.rlhf
    inputs: dict[str, str | None] = {
        "rewardModel": rlhf.reward.model if rlhf and rlhf.reward else None,
        "valueModel": rlhf.ppo.value_model if rlhf and rlhf.ppo else None,
        "referenceModel": rlhf.dpo.reference_model if rlhf and rlhf.dpo else None,
    }
    found: dict[str, Any] = {}
    record = upstream_record(model_dir)
    if record is not None:
        found["model"] = record
    for role, uri in inputs.items():
        if not uri:
            continue
        try:
            record = upstream_record(resolve_model_dir(uri, what=role))
        except TrainerError:
            continue
        if record is not None:
            found[role] = record
    return found


def _nan_safe(value: Any) -> Any:
    return str(value)
