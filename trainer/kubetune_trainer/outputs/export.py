"""Write the job's outputs (rank 0): weights, merged model, evaluation, lineage, card.

Output directory layout::

    adapter_model.safetensors + adapter_config.json   (PEFT methods)  or
    model.safetensors + config.json                    (full, dpo, reward)
    tokenizer files
    merged/                  base + LoRA folded in (output.mergeAdapter)
    eval_results.json        eval loss/perplexity of tuned vs. base model
    lineage.json, README.md  lineage record and model card
    data_report.json         row counts (and data_issues.jsonl with every bad row)
    train_log.jsonl, progress.json, checkpoints/
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kubetune_trainer.checkpoint.atomic import write_atomic
from kubetune_trainer.outputs.lineage import build_lineage, sha256_path
from kubetune_trainer.outputs.model_card import render_model_card

if TYPE_CHECKING:
    from kubetune_trainer.data.batching import BatchPlan
    from kubetune_trainer.data.validate import PreparedData
    from kubetune_trainer.distributed.strategy import Engine
    from kubetune_trainer.trainer import Trainer


def write_outputs(
    *,
    trainer: Trainer,
    engine: Engine,
    state_dict: dict[str, torch.Tensor],
    tokenizer: Any,
    model_dir: Path,
    data: PreparedData,
    eval_results: dict[str, Any],
    total_steps: int,
    plan: BatchPlan,
    wall_seconds: float,
) -> None:
    cfg = trainer.cfg
    out = trainer.output_dir
    out.mkdir(parents=True, exist_ok=True)
    trainer.method.save(engine.unwrapped, state_dict, out, tokenizer)
    merged_dir = None
    if cfg.output.merge_adapter:
        merged_dir = out / "merged"
        trainer.method.merge(model_dir, out, merged_dir, tokenizer)

    write_atomic(out / "eval_results.json", json.dumps(eval_results, indent=2, default=_nan_safe))
    reports = [r.summary() for r in data.reports]
    write_atomic(out / "data_report.json", json.dumps(reports, indent=2))

    datasets = []
    for split in [data.train] + ([data.eval] if data.eval else []):
        summary = split.report.summary()
        summary["sha256"] = sha256_path(split.files[0]) if split.files else None
        datasets.append(summary)
    state = trainer.state
    lineage = build_lineage(
        job={
            "name": cfg.name,
            "namespace": cfg.namespace,
            "attempt": cfg.attempt,
            "method": cfg.method,
            "configHash": cfg.config_hash,
            "resolvedJob": cfg.document,
        },
        base_model={
            "uri": cfg.model.uri,
            "revision": cfg.model.revision,
            "sha256": sha256_path(model_dir),
        },
        datasets=datasets,
        training={
            "steps": state.step,
            "plannedSteps": total_steps,
            "epochs": plan.epoch_of(state.step),
            "worldSize": trainer.env.world_size,
            "engine": engine.name,
            "precision": engine.precision,
            "batching": "padding-free (packed, per-sample positions)"
            if trainer.padding_free
            else "padded to the longest sample of each micro-batch",
            "tokensSeen": state.tokens_seen,
            "samplesSeen": state.samples_seen,
            "finalLoss": state.last_loss,
            "elapsedSeconds": round(wall_seconds, 3),
            "resumedFromStep": trainer.resumed_from,
            "skippedSteps": trainer.health.skipped_steps,
            "hyperparameters": {
                "learningRate": cfg.train.learning_rate,
                "scheduler": cfg.train.scheduler,
                "warmupRatio": cfg.train.warmup_ratio,
                "weightDecay": cfg.train.weight_decay,
                "globalBatchSize": cfg.train.global_batch_size,
                "microBatchSize": cfg.train.micro_batch_size,
                "gradientAccumulationSteps": cfg.train.gradient_accumulation_steps,
                "maxSeqLength": cfg.data.max_seq_length,
                "maxGradNorm": cfg.train.max_grad_norm,
                "seed": cfg.train.seed,
            },
        },
        evaluation=eval_results,
        outputs={
            "directory": str(out),
            "weights": sorted(p.name for p in out.glob("*.safetensors")),
            "merged": str(merged_dir) if merged_dir else None,
            "writtenAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    write_atomic(out / "lineage.json", json.dumps(lineage, indent=2, default=_nan_safe))
    write_atomic(out / "README.md", render_model_card(lineage))


def _nan_safe(value: Any) -> Any:
    return str(value)
