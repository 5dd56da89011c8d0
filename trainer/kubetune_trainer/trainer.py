"""The training loop: one lean loop for every method and parallelism strategy.

Why not ``transformers.Trainer``/TRL trainers: the contract needs control they do not
give cheaply — atomic multi-rank checkpoints with a COMPLETE marker, exact resume of
the data position without replaying a data loader, a health verdict *before* the
update is applied, SIGTERM agreement across ranks, padding-free batches for the
methods that can pack (full, lora, qlora, adapter; the others pad, see
``data.batching.padding_free_batches``) and logits only for target positions. The loop
is ~400 lines; methods plug in through :class:`~kubetune_trainer.methods.base.Method`
and strategies through :class:`~kubetune_trainer.distributed.strategy.Engine`.

Per optimizer step, on every rank: collate this rank's micro-batches (fixed count),
all-reduce the number of target tokens (or pairs) of the global batch, run
forward/backward with the loss normalised by that global count, all-reduce the loss,
clip, check health, step. Then log, and checkpoint when the interval, a SIGTERM or the
end says so (the stop decision is all-reduced so ranks never disagree).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import torch

from kubetune.api.resolve import ResolvedJob
from kubetune.contract import TrainerPaths
from kubetune.contract.evaluation import EvaluationSummary
from kubetune_trainer.checkpoint import atomic
from kubetune_trainer.checkpoint.state import (
    MAX_HELD_OUT_EXAMPLES,
    TrainerState,
    load_rng,
    save_rng,
)
from kubetune_trainer.continual.runner import ContinualLearning
from kubetune_trainer.curves import CurveRecorder, write_curves
from kubetune_trainer.data.batching import (
    Batch,
    BatchPlan,
    collate,
    eval_micro_batches,
    padding_free_batches,
)
from kubetune_trainer.data.encode import Encoded, EncodedPrompt
from kubetune_trainer.data.validate import PreparedData, prepare_data, write_issues
from kubetune_trainer.distributed.env import (
    all_gather_objects,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
    shutdown,
)
from kubetune_trainer.distributed.precision import resolve_precision
from kubetune_trainer.distributed.strategy import Engine, build_engine, write_engine_info
from kubetune_trainer.dp.budget import (
    PrivacyBudgetExhaustedError,
    PrivacyPlan,
    plan_privacy,
)
from kubetune_trainer.dp.dpsgd import DpStep, dp_sgd_gradients, poisson_sample, trainable
from kubetune_trainer.errors import InvalidConfigError, PreemptedError, TrainerError
from kubetune_trainer.evaluation.runner import generation_model, run_evaluation
from kubetune_trainer.health import HealthMonitor
from kubetune_trainer.methods.base import Method
from kubetune_trainer.methods.online import OnlineMethod
from kubetune_trainer.methods.policy import wants_lora_policy
from kubetune_trainer.methods.registry import get_method
from kubetune_trainer.metrics import MetricsServer, TrainerMetrics
from kubetune_trainer.metrics_switch import Absorb, NullMetrics, metrics_enabled
from kubetune_trainer.models.load import load_dtype, load_tokenizer, resolve_model_dir
from kubetune_trainer.models.varlen_attention import padding_free_attention
from kubetune_trainer.moe.report import record_metrics as record_moe_metrics
from kubetune_trainer.moe.training import MoeTraining
from kubetune_trainer.outputs.export import RunSummary, write_outputs
from kubetune_trainer.progress import ProgressReporter
from kubetune_trainer.rl.guards import GuardWarning
from kubetune_trainer.signals import StopRequest
from kubetune_trainer.vision.encode import saved_processor

log = logging.getLogger("kubetune.trainer")

#: guard warnings kept in the progress document (the newest)
MAX_WARNINGS = 4
#: padding-free rows are rounded up to a multiple of this many tokens (a label-free
#: segment): a handful of row shapes instead of a new one per step, so CPU kernels
#: compiled per shape (oneDNN bf16 matmuls) are reused instead of accumulating
PACKED_ROW_MULTIPLE = 64


@dataclass
class RunResult:
    """What a finished run produced (returned to tests and the CLI)."""

    output_dir: Path
    steps: int
    final_loss: float | None
    eval_results: dict[str, Any] = field(default_factory=dict)
    resumed_from: int | None = None
    #: the trained module (unwrapped), for in-process callers such as tests
    model: Any = None
    #: spec.evaluation's verdict (rank 0; None without spec.evaluation or on other ranks)
    evaluation: EvaluationSummary | None = None


def seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class Trainer:
    """One rank's run of a job; a context manager that joins the gang and leaves it.

    Entering joins the process group, serves metrics (rank 0) and traps SIGTERM;
    leaving undoes all of it. On failure the process group is left as is: peers may be
    blocked in a collective (a barrier would hang) and destroying a gloo group under
    them aborts the process, replacing our exit code; ``__main__`` exits with
    ``os._exit`` instead.
    """

    def __init__(self, job: ResolvedJob, paths: TrainerPaths) -> None:
        spec = job.spec
        self.job = job
        self.hp = spec.hyperparameters
        self.paths = paths
        self.env = env = init_distributed(spec.distributed.strategy, job.derived.world_size)
        self.output_dir = paths.output_dir
        self.ckpt_root = paths.checkpoints_dir
        # KUBETUNE_METRICS=off (benchmarks, debugging): no metrics, progress or curves
        self.observe = metrics_enabled()
        self.progress: ProgressReporter = (
            ProgressReporter(paths.progress_file, enabled=env.is_main)
            if self.observe
            else cast(ProgressReporter, Absorb())
        )
        self.metrics: TrainerMetrics = (
            TrainerMetrics() if self.observe else cast(TrainerMetrics, NullMetrics())
        )
        self.curves = CurveRecorder(enabled=env.is_main and self.observe)
        self.server: MetricsServer | None = None
        self.stop = StopRequest()
        self.health = HealthMonitor(spec.health)
        self.method: Method = get_method(job)
        self.continual = ContinualLearning.create(job, env)  # spec.continual, else None
        self.moe: MoeTraining | None = None  # a MoE base (spec.moe; kubetune_trainer.moe)
        self.warnings: list[str] = []
        self.dp: PrivacyPlan | None = None  # spec.differentialPrivacy (kubetune_trainer.dp)
        self._dp_last: DpStep | None = None
        self.config_hash = job.config_hash()
        self.state = TrainerState(
            world_size=env.world_size,
            strategy=spec.distributed.strategy,
            config_hash=self.config_hash,
        )
        self.resumed_from: int | None = None
        self._last_ckpt_time = time.monotonic()
        self._last_ckpt_step: int | None = None

    def __enter__(self) -> Trainer:
        self.start_observability()
        self.stop.install()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, TrainerError):
            self.progress.update(state="failed", message=exc.message[:1000])
            if not isinstance(exc, PreemptedError):  # a failed run's curves show why
                write_curves(self.curves, self.output_dir, f"{self.job.name} (failed)")
        if self.server is not None:
            self.server.stop()
        self.progress.stop()
        self.stop.restore()
        if exc is None:
            shutdown(self.env)

    # ------------------------------------------------------------------ setup
    def start_observability(self) -> None:
        if not self.env.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if not self.observe:
            return
        self.progress.update(state="validating")
        self.progress.start_heartbeat()
        try:
            self.server = MetricsServer(self.metrics, self.progress, self.paths.metrics_port)
            self.server.start()
            log.info(
                "metrics on :%s/metrics, progress on :%s/progress",
                self.server.port,
                self.server.port,
            )
        except OSError as exc:
            log.warning("metrics server not started on port %s: %s", self.paths.metrics_port, exc)
            self.server = None
        self.metrics.set_info(
            {
                "method": self.job.spec.method,
                "base_model": self.job.spec.model.uri,
                "strategy": self.job.spec.distributed.strategy,
            }
        )
        self.metrics.world_size.set(self.env.world_size)

    def load_data(self, tokenizer: Any) -> PreparedData:
        data = prepare_data(self.job, tokenizer)
        if self.env.is_main:
            for report in data.reports:
                self.metrics.skipped_rows.labels(split=report.split).inc(report.skipped_rows)
                self.metrics.truncated_rows.labels(split=report.split).inc(report.truncated_rows)
                log.info(
                    "%s data: %d rows, %d used, %d skipped (invalid), %d truncated to %d tokens",
                    report.split,
                    report.rows,
                    report.valid_rows,
                    report.skipped_rows,
                    report.truncated_rows,
                    self.job.spec.dataset.max_seq_length,
                )
                if report.personal_data is not None:  # counts and kinds, never values
                    counts = report.personal_data.counts
                    log.info(
                        "%s data: personal data (%s): %s in %d rows",
                        report.split,
                        _personal_data_action(self.job),
                        ", ".join(f"{k} {n}" for k, n in sorted(counts.items())) or "none",
                        report.personal_data.rows_with_findings,
                    )
            if any(r.issues for r in data.reports):
                write_issues(data.reports, self.output_dir / "data_issues.jsonl")
            self.progress.update(
                skipped_rows=sum(r.skipped_rows for r in data.reports),
                truncated_rows=sum(r.truncated_rows for r in data.reports),
            )
        return data

    def scheduler_factory(self, total_steps: int) -> Any:
        from transformers import get_scheduler

        warmup = math.ceil(self.hp.warmup_ratio * total_steps)

        def factory(optimizer: torch.optim.Optimizer) -> Any:
            return get_scheduler(
                self.hp.scheduler,
                optimizer=optimizer,
                num_warmup_steps=warmup,
                num_training_steps=total_steps,
            )

        return factory

    # ----------------------------------------------------------------- batches
    def batch(self, examples: list[Encoded], ids: list[int], split: str) -> Batch:
        units = [examples[i] for i in ids]
        batch = collate(
            units,
            padding_free=self.padding_free,
            pad_token_id=self.pad_token_id,
            dummy=examples[0],
            pad_to_multiple_of=PACKED_ROW_MULTIPLE,
        )
        batch.unit_ids = ids or [0]
        self.method.attach(batch, split)
        return batch.to(self.env.device)

    # --------------------------------------------------------------- evaluate
    def evaluate(self, engine: Engine, examples: list[Encoded]) -> dict[str, float]:
        return self.evaluate_examples(engine, examples)[0]

    def evaluate_examples(
        self, engine: Engine, examples: list[Encoded]
    ) -> tuple[dict[str, float], list[list[float]] | None]:
        """The corpus-level eval metrics, and [summed NLL, target tokens] of every example in
        example order (the same on every rank) when the method's loss is the LM objective
        and the set has at most MAX_HELD_OUT_EXAMPLES examples, else None."""
        if isinstance(self.method, OnlineMethod):  # mean reward of held-out prompts
            prompts = cast(list[EncodedPrompt], examples)
            return self.method.evaluate_prompts(engine, prompts), None
        engine.eval()
        totals: dict[str, float] = defaultdict(float)
        keep = len(examples) <= MAX_HELD_OUT_EXAMPLES
        rows: dict[int, list[float]] | None = {}
        micro = self.hp.micro_batch_size
        with torch.no_grad():
            for ids in eval_micro_batches(len(examples), micro, self.env.world_size, self.env.rank):
                batch = self.batch(examples, ids, split="eval")
                out = self.method.loss(engine.forward, engine.model, batch)
                if ids:
                    totals["loss"] += float(out.loss_sum)
                    totals["count"] += out.count
                    for key, value in out.metrics.items():
                        totals[key] += value
                    per = out.per_example
                    if rows is not None and keep and per is not None and len(per.nll) == len(ids):
                        pairs = zip(per.nll.tolist(), per.tokens.tolist(), strict=True)
                        rows.update({i: [nll, n] for i, (nll, n) in zip(ids, pairs, strict=True)})
                    else:
                        rows = None
        keys = sorted(set(totals) | {"loss", "count"})
        summed = dict(zip(keys, all_reduce_sum([totals[k] for k in keys], self.env), strict=True))
        per_example: list[list[float]] | None = None
        if keep:  # the same decision on every rank: the gather is a collective
            parts = all_gather_objects(rows, self.env)
            if all(part is not None for part in parts):
                merged = {i: row for part in parts for i, row in part.items()}
                if len(merged) == len(examples):
                    per_example = [merged[i] for i in range(len(examples))]
        engine.train()
        return self.method.eval_metrics(summed), per_example

    # ------------------------------------------------------------- checkpoint
    def save_checkpoint(self, engine: Engine, step: int) -> None:
        started = time.perf_counter()
        self.progress.update(state="saving")
        staging = atomic.staging_path(self.ckpt_root, step)
        if self.env.is_main:
            atomic.prepare_staging(self.ckpt_root, step)
        barrier(self.env)
        engine.save(staging)
        save_rng(staging, self.env.rank)
        if self.env.is_main:
            self.state.step = step
            self.state.save(staging)
            self.curves.save(staging)
            self.method.save_state(staging)
            if self.continual is not None:
                self.continual.save_state(staging)
            write_engine_info(engine, staging)
        barrier(self.env)
        final: Path | None = None
        if self.env.is_main:
            final = atomic.commit(
                self.ckpt_root,
                staging,
                step,
                {"configHash": self.config_hash, "engine": engine.name},
            )
            atomic.prune(self.ckpt_root, self.job.spec.checkpoint.keep_last)
        barrier(self.env)
        self._last_ckpt_time = time.monotonic()
        self._last_ckpt_step = step
        if self.env.is_main:
            self.metrics.checkpoints.inc()
            self.metrics.checkpoint_duration.observe(time.perf_counter() - started)
            self.metrics.last_checkpoint_step.set(step)
            self.progress.update(
                state="training", last_checkpoint_step=step, last_checkpoint_path=str(final)
            )
            log.info("checkpoint %s written in %.2fs", final, time.perf_counter() - started)

    def try_resume(self, engine: Engine) -> None:
        if self.env.is_main:
            atomic.clean_staging(self.ckpt_root)
        barrier(self.env)
        if self.job.spec.checkpoint.resume != "auto":
            return
        # rank 0 decides; every rank must see the same directory (shared output volume)
        found = atomic.latest_complete(self.ckpt_root) if self.env.is_main else None
        latest_name = broadcast_object(found.name if found else None, self.env)
        if latest_name is None:
            return
        latest = self.ckpt_root / latest_name
        (missing,) = all_reduce_max([0.0 if (latest / atomic.COMPLETE).exists() else 1.0], self.env)
        if missing:
            raise InvalidConfigError(
                f"checkpoint {latest} is not visible on every rank: the output location must "
                "be one volume shared by all training pods (e.g. a ReadWriteMany PVC)"
            )
        saved = TrainerState.load(latest)
        strategy = self.job.spec.distributed.strategy
        if saved.strategy != strategy and "deepspeed" in (saved.strategy, strategy):
            raise InvalidConfigError(
                f"checkpoint {latest} was written by strategy {saved.strategy}, the job now uses "
                f"{strategy}; set checkpoint.resume: never to start over"
            )
        if saved.world_size != self.env.world_size and strategy == "deepspeed":
            raise InvalidConfigError(
                f"checkpoint {latest} was written by {saved.world_size} DeepSpeed processes, "
                f"this gang has {self.env.world_size}; ZeRO state cannot be re-partitioned here"
            )
        if saved.config_hash and saved.config_hash != self.config_hash:
            log.warning("resuming from %s written with a different config hash", latest)
        engine.load(latest)
        if not load_rng(latest, self.env.rank):
            seed_all(self.hp.seed + 7919 * self.env.rank + saved.step)
        self.method.load_state(latest)
        if self.continual is not None:
            self.continual.load_state(latest)
        self.curves.load(latest, saved.step)
        self.state = saved
        self.state.world_size = self.env.world_size
        self.health.nonfinite_streak = saved.nonfinite_streak
        self.resumed_from = saved.step
        self._last_ckpt_step = saved.step
        log.info("resumed from %s (step %d)", latest, saved.step)

    # -------------------------------------------------------------------- run
    def run(self) -> RunResult:
        spec, hp, env, traits = self.job.spec, self.hp, self.env, self.method.traits
        started = time.monotonic()

        model_dir = resolve_model_dir(spec.model.uri, spec.model.revision)
        tokenizer = load_tokenizer(model_dir, spec.model.trust_remote_code)
        self.pad_token_id = int(tokenizer.pad_token_id)
        data = self.load_data(tokenizer)
        if self.continual is not None:  # protected rows replayed among the new ones
            self.continual.add_replay(tokenizer, data)
        self.padding_free = padding_free_batches(self.job)

        self.progress.update(state="loading")
        if self.padding_free:
            self.method.attn_implementation = padding_free_attention(env.device)
        precision = resolve_precision(hp.precision, env.device)
        seed_all(hp.seed)  # identical initialisation (reward head, adapters) on all ranks
        frozen_base = traits.takes_peft or wants_lora_policy(self.job)
        dtype = load_dtype(spec.model, precision, frozen_base=frozen_base)
        self.method.setup(model_dir, tokenizer, dtype)
        model = self.method.build_model(model_dir, tokenizer, dtype)
        self.moe = MoeTraining.attach(self.job, model)
        n_params = sum(p.numel() for p in model.parameters())
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if self.moe is not None:  # expert selection trains rows of fused expert tensors
            n_train = self.moe.trainable_parameters(model)
        self.metrics.parameters.set(n_params)
        self.metrics.trainable_parameters.set(n_train)
        self.metrics.set_flops_model(n_params, env.device, env.world_size)
        log.info(
            "method %s: %d trainable of %d parameters (%.3f%%), precision %s, %s batches",
            spec.method,
            n_train,
            n_params,
            100.0 * n_train / max(n_params, 1),
            precision,
            "padding-free" if self.padding_free else "padded",
        )

        plan = BatchPlan(
            num_units=len(data.train.examples),
            global_batch_size=self.job.derived.global_batch_size,
            micro_batch_size=hp.micro_batch_size,
            world_size=env.world_size,
            gradient_accumulation_steps=self.job.derived.gradient_accumulation_steps,
            seed=hp.seed,
        )
        total_steps = plan.total_steps(hp.epochs, hp.max_steps)
        updates = total_steps  # optimizer updates, which the LR schedule counts
        if isinstance(self.method, OnlineMethod):
            self.method.check_plan(self.job.derived.gradient_accumulation_steps)
            updates = total_steps * self.method.updates_per_step
        engine = build_engine(model, env, precision, self.job, self.scheduler_factory(updates))
        if spec.differential_privacy is not None:
            self.dp = self.plan_privacy(engine, len(data.train.examples), total_steps)
        if self.moe is not None:
            self.moe.bind_optimizer(getattr(engine, "optimizer", None))
        self.try_resume(engine)
        if self.resumed_from is None:
            seed_all(hp.seed + 7919 * env.rank)
        self.method.prepare(engine, data, env, self.batch)
        if self.continual is not None:  # eval before training, theta*, Fisher
            evaluate = functools.partial(self.evaluate, engine)
            self.continual.prepare(engine, self.method, self.batch, evaluate)
        self.metrics.total_steps.set(total_steps)
        if self.dp is not None and env.is_main:
            self.metrics.dp_target_epsilon.set(self.dp.target_epsilon)
            self.metrics.dp_epsilon.set(self.dp.epsilon(self.state.step))

        if data.eval is not None and self.state.base_eval is None:
            self.progress.update(state="evaluating", total_steps=total_steps)
            with self.method.base_behaviour(engine.unwrapped):
                self.state.base_eval, self.state.base_eval_examples = self.evaluate_examples(
                    engine, data.eval.examples
                )
            if env.is_main:
                self.metrics.eval_loss.labels(model="base").set(self.state.base_eval["loss"])
                self.curves.record_eval(self.state.step, self.state.base_eval["loss"], "base")
                log.info("base model eval: %s", _short(self.state.base_eval))

        self.progress.update(
            state="training",
            total_steps=total_steps,
            step=self.state.step,
            resumed_from_step=self.resumed_from,
        )
        self.train_steps(engine, data, plan, total_steps)
        if self._last_ckpt_step != self.state.step:
            self.save_checkpoint(engine, self.state.step)

        eval_results: dict[str, Any] = {"evaluated": data.eval is not None}
        tuned_examples: list[list[float]] | None = None
        if data.eval is not None:
            self.progress.update(state="evaluating")
            tuned, tuned_examples = self.evaluate_examples(engine, data.eval.examples)
            eval_results.update(base=self.state.base_eval, tuned=tuned)
            if env.is_main:
                self.metrics.eval_loss.labels(model="tuned").set(tuned["loss"])
                self.curves.record_eval(self.state.step, tuned["loss"], "tuned")
                self.progress.update(eval_loss=tuned["loss"])
                log.info("tuned model eval: %s", _short(tuned))
        if self.continual is not None:  # forgetting of the protected tasks
            evaluate = functools.partial(self.evaluate, engine)
            eval_results["continual"] = self.continual.finish(evaluate, eval_results)

        self.progress.update(state="saving")
        evaluation: EvaluationSummary | None = None
        full = engine.full_state_dict()
        if env.is_main:
            assert full is not None
            summary = RunSummary(
                job=self.job,
                output_dir=self.output_dir,
                steps=self.state.step,
                planned_steps=total_steps,
                epochs=plan.epoch_of(self.state.step),
                world_size=env.world_size,
                engine=engine.name,
                precision=engine.precision,
                padding_free=self.padding_free,
                tokens_seen=self.state.tokens_seen,
                samples_seen=self.state.samples_seen,
                final_loss=self.state.last_loss,
                elapsed_seconds=time.monotonic() - started,
                resumed_from=self.resumed_from,
                skipped_steps=self.health.skipped_steps,
                eval_results=eval_results,
                curves=self.curves,
                moe=self.moe.card() if self.moe is not None else None,
                privacy=self.dp.record(self.state.step) if self.dp is not None else None,
            )
            write_outputs(
                summary,
                method=self.method,
                model=engine.unwrapped,
                state_dict=self.method.export_state_dict(engine.unwrapped, full),
                tokenizer=saved_processor(self.job, model_dir) or tokenizer,
                model_dir=model_dir,
                data=data,
            )
            if spec.evaluation is not None:  # generation on rank 0; the others wait
                self.progress.update(state="evaluating")
                evaluation = run_evaluation(
                    self.job,
                    method=self.method,
                    model=generation_model(engine, self.method, model_dir, self.output_dir),
                    tokenizer=tokenizer,
                    eval_results=eval_results,
                    output_dir=self.output_dir,
                    held_out_examples=(self.state.base_eval_examples, tuned_examples),
                )
        barrier(env)
        if env.is_main:  # the final scrape, for runs nobody scraped (kubetune run --local)
            (self.output_dir / "metrics.prom").write_bytes(self.metrics.exposition())
        self.progress.update(state="done", step=self.state.step)
        self.progress.stop()
        return RunResult(
            self.output_dir,
            self.state.step,
            self.state.last_loss,
            eval_results,
            self.resumed_from,
            engine.unwrapped,
            evaluation,
        )

    def train_steps(
        self, engine: Engine, data: PreparedData, plan: BatchPlan, total_steps: int
    ) -> None:
        env, method = self.env, self.method
        examples = data.train.examples
        interval_steps = self.job.spec.checkpoint.interval_steps
        interval_seconds = self.job.spec.checkpoint.interval_seconds
        log_path = self.output_dir / "train_log.jsonl"
        step_times: list[float] = []
        engine.train()
        while self.state.step < total_steps:
            t0 = time.perf_counter()
            step = self.state.step
            if self.dp is not None and self.dp.epsilon(step + 1) > self.dp.target_epsilon:
                self.stop_at_privacy_budget(engine, step, total_steps)
            extra: dict[str, float] = {}
            if isinstance(method, OnlineMethod):
                lr = engine.learning_rate()
                prompts = [
                    [cast(EncodedPrompt, examples[i]) for i in ids]
                    for ids in plan.micro_batches(step, env.rank)
                ]
                self.metrics.data_wait.inc(time.perf_counter() - t0)
                outcome = method.online_step(
                    engine,
                    prompts,
                    step + 1,
                    functools.partial(self.apply_update, engine, step + 1),
                )
                loss, grad_norm = outcome.loss, outcome.grad_norm
                total_tokens, total_samples = outcome.tokens, outcome.samples
                extra = outcome.metrics
                self.report_warnings(outcome.warnings)
            else:
                loss, grad_norm, total_tokens, total_samples, lr = self.supervised_step(
                    engine, examples, plan, step, t0
                )
                if self.continual is not None:
                    extra = self.continual.log_fields()
                    if "continual/penalty" in extra and env.is_main:
                        self.metrics.continual_penalty.set(extra["continual/penalty"])
                if self.dp is not None:
                    extra = self.dp_log_fields(step + 1)
            self.state.step = step + 1
            self.state.tokens_seen += int(total_tokens)
            self.state.samples_seen += int(total_samples)
            self.state.last_loss = loss
            self.state.nonfinite_streak = self.health.nonfinite_streak
            elapsed = time.perf_counter() - t0
            step_times.append(elapsed)
            self.report_step(
                loss,
                lr,
                grad_norm,
                total_tokens,
                total_samples,
                elapsed,
                step_times,
                plan,
                total_steps,
                log_path,
                extra,
            )
            stop_local = 1.0 if self.stop.requested(self.state.step) else 0.0
            due_time = (
                1.0
                if env.is_main
                and interval_seconds
                and time.monotonic() - self._last_ckpt_time >= interval_seconds
                else 0.0
            )
            stop_flag, time_flag = all_reduce_max([stop_local, due_time], env)
            due_steps = bool(interval_steps) and self.state.step % int(interval_steps or 1) == 0
            periodic = (due_steps or bool(time_flag)) and self.state.step < total_steps
            if periodic or stop_flag:
                self.save_checkpoint(engine, self.state.step)
            if stop_flag:
                reason = self.stop.signal_name or "a stop request on another rank"
                self.progress.update(state="failed", message=f"preempted by {reason}")
                raise PreemptedError(
                    f"stopped by {reason} at step {self.state.step}/{total_steps}; checkpoint "
                    f"{atomic.checkpoint_name(self.state.step)} is complete; a restart resumes "
                    "there"
                )

    def supervised_step(
        self, engine: Engine, examples: list[Encoded], plan: BatchPlan, step: int, t0: float
    ) -> tuple[float, float | None, float, float, float]:
        """Forward/backward of this rank's micro-batches and one update: (loss, grad norm,
        global tokens, global samples, learning rate)."""
        env, method = self.env, self.method
        if self.dp is not None:
            return self.dp_step(engine, examples, step, t0)
        batches = [self.batch(examples, ids, "train") for ids in plan.micro_batches(step, env.rank)]
        self.metrics.data_wait.inc(time.perf_counter() - t0)
        local_count = sum(method.count(b) for b in batches)
        (global_count,) = all_reduce_sum([local_count], env)
        scale = env.world_size / global_count if global_count > 0 else 0.0
        loss_sum = 0.0
        for index, batch in enumerate(batches):
            last = index == len(batches) - 1
            with engine.sync_context(last):
                if self.moe is None:
                    out = method.loss(engine.forward, engine.model, batch)
                else:  # record the routing; add the load-balancing loss
                    with self.moe.capture():
                        out = method.loss(engine.forward, engine.model, batch)
                    out = self.moe.add_aux_loss(out, method.count(batch))
                objective = out.loss_sum * scale
                penalty = self.continual.penalty(engine) if self.continual and last else None
                if penalty is not None:  # once per update; DDP averages it to itself
                    objective = objective + penalty
                engine.backward(objective, last)
            loss_sum += float(out.loss_sum.detach())
        tokens = sum(b.real_tokens for b in batches)
        samples = sum(b.samples for b in batches)
        total_loss, total_tokens, total_samples = all_reduce_sum(
            [loss_sum, float(tokens), float(samples)], env
        )
        loss = total_loss / global_count if global_count > 0 else float("nan")
        lr = engine.learning_rate()
        grad_norm = self.apply_update(engine, step + 1, loss)
        if self.moe is not None:  # expert load over the gang (a collective)
            self.moe.finish_step(lambda values: all_reduce_sum(values, env))
        return loss, grad_norm, total_tokens, total_samples, lr

    # ------------------------------------------------------- differential privacy
    def plan_privacy(self, engine: Engine, rows: int, total_steps: int) -> PrivacyPlan:
        """spec.differentialPrivacy against this run: one process, no loss scaling."""
        dp_spec = self.job.spec.differential_privacy
        assert dp_spec is not None
        if engine.name != "single":
            raise InvalidConfigError(
                f"differentialPrivacy runs in one process; this gang has {self.env.world_size} "
                f"(engine {engine.name})"
            )
        if getattr(engine, "scaler", None) is not None:
            raise InvalidConfigError(
                "differentialPrivacy does not support fp16 loss scaling; set "
                "hyperparameters.precision to bf16 or fp32"
            )
        dp = plan_privacy(
            dp_spec, rows, self.job.derived.global_batch_size, total_steps, strict=False
        )
        log.info("%s", dp.describe())
        if self.env.is_main:
            self.progress.update(
                dp_epsilon=dp.epsilon(self.state.step), dp_target_epsilon=(dp.target_epsilon)
            )
        return dp

    def dp_step(
        self, engine: Engine, examples: list[Encoded], step: int, t0: float
    ) -> tuple[float, float | None, float, float, float]:
        """One DP-SGD step (kubetune_trainer.dp.dpsgd): Poisson-sampled rows, each
        row's gradient clipped, Gaussian noise once; then the usual update."""
        dp = self.dp
        assert dp is not None
        ids = poisson_sample(len(examples), dp.sample_rate, self.hp.seed, step)
        batches = [self.batch(examples, [i], "train") for i in ids]
        self.metrics.data_wait.inc(time.perf_counter() - t0)
        result = dp_sgd_gradients(
            trainable(engine.unwrapped), engine.forward, engine.model, self.method, batches, dp
        )
        self._dp_last = result
        if result.count > 0:
            loss = result.loss_sum / result.count
        else:  # an empty Poisson sample: the update is noise alone; the log repeats the loss
            loss = self.state.last_loss if self.state.last_loss is not None else 0.0
        lr = engine.learning_rate()
        grad_norm = self.apply_update(engine, step + 1, loss)
        return loss, grad_norm, result.tokens, result.samples, lr

    def dp_log_fields(self, steps: int) -> dict[str, float]:
        """The train log's privacy fields after ``steps`` steps; the gauge and progress."""
        assert self.dp is not None
        spent = self.dp.epsilon(steps)
        fields = {"dp/epsilon": spent}
        if self._dp_last is not None:
            fields["dp/rows"] = self._dp_last.samples
            fields["dp/clipped_fraction"] = self._dp_last.clipped_fraction
            fields["dp/mean_row_grad_norm"] = self._dp_last.mean_row_norm
        if self.env.is_main:
            self.metrics.dp_epsilon.set(spent)
            self.progress.update(dp_epsilon=spent)
        return fields

    def stop_at_privacy_budget(self, engine: Engine, step: int, total_steps: int) -> None:
        """Stop before a step that would spend more than targetEpsilon: checkpoint, explain."""
        assert self.dp is not None
        if self._last_ckpt_step != step:
            self.save_checkpoint(engine, step)
        spent, after = self.dp.epsilon(step), self.dp.epsilon(step + 1)
        message = (
            f"differential privacy budget reached at step {step}/{total_steps}: epsilon spent "
            f"{spent:.3f}, the next step would spend {after:.3f} > targetEpsilon "
            f"{self.dp.target_epsilon:g} (delta {self.dp.delta:.3g}, noise multiplier "
            f"{self.dp.noise_multiplier:g}); checkpoint {atomic.checkpoint_name(step)} is "
            "complete. Raise noiseMultiplier or lower the steps; retrying would not help"
        )
        self.progress.update(state="failed", message=message[:1000])
        raise PrivacyBudgetExhaustedError(message)

    def apply_update(self, engine: Engine, step: int, loss: float) -> float | None:
        """Clip, check health (before the update is applied), then step or skip."""
        # DP-SGD clipped every row already; clipping the noisy sum again would change the
        # update the accountant analysed (it would still be private, as post-processing)
        grad_norm = engine.clip_gradients(math.inf if self.dp else self.hp.max_grad_norm)
        can_skip = engine.name != "deepspeed"
        verdict = self.health.check(step, loss, grad_norm, can_skip=can_skip)
        if verdict == "skip":
            engine.skip_step()
            self.metrics.skipped_steps.inc()
            log.warning("step %d: non-finite loss, update skipped (tolerated)", step)
            return grad_norm
        after = engine.optimizer_step()
        if grad_norm is None and after is not None:
            grad_norm = after
            self.health.check(step, loss, grad_norm, can_skip=False)
        return grad_norm

    def report_warnings(self, warnings: list[GuardWarning]) -> None:
        """Guard findings: a log line, a counter per guard, and the progress document."""
        if not warnings or not self.env.is_main:
            return
        for warning in warnings:
            log.warning("guard %s at step %d: %s", warning.guard, warning.step, warning.reason)
            self.metrics.guard_warnings.labels(guard=warning.guard).inc()
        self.warnings = (self.warnings + [w.reason for w in warnings])[-MAX_WARNINGS:]
        self.progress.update(warnings=list(self.warnings))

    def report_step(
        self,
        loss: float,
        lr: float,
        grad_norm: float | None,
        tokens: float,
        samples: float,
        elapsed: float,
        step_times: list[float],
        plan: BatchPlan,
        total_steps: int,
        log_path: Path,
        extra: dict[str, float] | None = None,
    ) -> None:
        if not self.env.is_main:
            return
        step = self.state.step
        recent = step_times[-20:]
        avg = sum(recent) / len(recent)
        eta = max(0.0, (total_steps - step) * avg)
        tps = tokens / elapsed if elapsed > 0 else 0.0
        sps = samples / elapsed if elapsed > 0 else 0.0
        m = self.metrics
        m.loss.set(loss)
        m.learning_rate.set(lr)
        if grad_norm is not None:
            m.grad_norm.set(grad_norm)
        m.tokens_per_second.set(tps)
        m.record_mfu(tps)
        m.samples_per_second.set(sps)
        m.step_duration.observe(elapsed)
        m.steps.inc()
        m.tokens.inc(tokens)
        m.samples.inc(samples)
        m.step.set(step)
        m.epoch.set(plan.epoch_of(step))
        m.eta.set(eta)
        m.record_memory(self.env.device.type)
        self.progress.update(
            state="training",
            step=step,
            total_steps=total_steps,
            epoch=plan.epoch_of(step),
            loss=loss if math.isfinite(loss) else None,
            learning_rate=lr,
            tokens_per_second=tps,
            samples_per_second=sps,
            grad_norm=grad_norm if grad_norm is not None and math.isfinite(grad_norm) else None,
            eta_seconds=eta,
        )
        self.curves.record_step(step, loss=loss, learning_rate=lr, tokens_per_second=tps)
        record = {
            "step": step,
            "loss": loss,
            "learningRate": lr,
            "gradNorm": grad_norm,
            "tokens": tokens,
            "tokensPerSecond": tps,
            "stepSeconds": elapsed,
            "epoch": plan.epoch_of(step),
        }
        if extra:  # online RL: the field's names (objective/kl, policy/clipfrac, ...)
            m.record_rl(extra)
            record.update(extra)
        if self.moe is not None and self.moe.last is not None:  # expert load (MoE bases)
            record_moe_metrics(m, self.moe.last)
            record.update(self.moe.last.log_fields())
        with log_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        gn = f"{grad_norm:.3f}" if grad_norm is not None else "n/a"
        log.info(
            "step %d/%d loss %.4f lr %.3g grad %s tok/s %.0f eta %.0fs",
            step,
            total_steps,
            loss,
            lr,
            gn,
            tps,
            eta,
        )


def _short(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, int | float))


def _personal_data_action(job: ResolvedJob) -> str:
    """spec.dataPolicy.personalData.action, for the log ('' without one)."""
    policy = job.spec.data_policy
    return policy.personal_data.action if policy and policy.personal_data else ""
