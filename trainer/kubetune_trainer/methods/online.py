"""PPO, GRPO and RLOO: online RL on the shared loop, one class per update rule.

One optimizer step of the loop is one *RL step*: this rank's prompts of the step (the
loop's batch plan, so resume, epochs and sharding work as for every method) are rolled
out in micro-batches with a KV cache, scored (reward model or verifiable check), turned
into advantages, and then trained on for ``epochs`` passes of ``miniBatches`` optimizer
updates each (PPO) or ``epochs`` passes of one update (GRPO, RLOO). The loop keeps
everything else: health checks, checkpoints, SIGTERM, metrics, progress.

Where the KL to the reference goes follows each method's paper and TRL: PPO and RLOO
penalise the reward per token (k1, optionally with Ziegler's adaptive coefficient), GRPO
adds ``beta * k3`` to the loss. The reference is the base under a LoRA adapter (no second
copy) or, for full fine-tuning, a frozen copy of the base loaded once.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kubetune.api.resolve import ResolvedJob
from kubetune.api.rlhf import GroupSettings, PpoSettings
from kubetune_trainer.data.encode import EncodedPrompt
from kubetune_trainer.distributed.env import all_gather_objects, all_reduce_sum
from kubetune_trainer.distributed.precision import autocast
from kubetune_trainer.errors import InvalidConfigError
from kubetune_trainer.methods.base import Forward, LossOutput, MakeBatch
from kubetune_trainer.methods.full import FullFineTuning
from kubetune_trainer.rl.advantages import (
    gae,
    group_relative_advantages,
    leave_one_out_advantages,
    masked_whiten,
)
from kubetune_trainer.rl.critic import Critic
from kubetune_trainer.rl.guards import (
    Guards,
    GuardWarning,
    KLCeilingGuard,
    LengthDriftGuard,
    RewardDivergenceGuard,
)
from kubetune_trainer.rl.kl import (
    AdaptiveKLController,
    FixedKLController,
    KLController,
    kl_penalized_rewards,
    kl_per_token,
)
from kubetune_trainer.rl.losses import (
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    explained_variance,
    ratio_exploded,
)
from kubetune_trainer.rl.rewards import RunningMoments, normalize_scores, shaped_scores
from kubetune_trainer.rl.rollout import (
    GenerationSettings,
    Rollout,
    generate_rollouts,
    is_peft_model,
    masked_logprobs,
    reference_logprobs,
    response_logits,
)
from kubetune_trainer.rl.scoring import ModelScorer, Scorer, build_scorer, load_classifier

if TYPE_CHECKING:
    from kubetune_trainer.data.validate import PreparedData
    from kubetune_trainer.distributed.env import DistEnv
    from kubetune_trainer.distributed.strategy import Engine

STATE_FILE = "online_state.pt"
#: TRL/OpenRLHF stop a batch's PPO passes once approx KL passes 1.5x the target
TARGET_KL_MARGIN = 1.5
#: min_rise/min_fall of the reward-divergence guard, in reward units over its window
DIVERGENCE_MIN_CHANGE = 0.05

#: one optimizer update: loss value -> gradient norm (clipping, health, step in the loop)
Update = Callable[[float], float | None]


@dataclass
class Chunk:
    """One micro-batch of rollouts with everything the update needs."""

    rollout: Rollout
    ref_logprobs: torch.Tensor  # (B, R)
    scores: torch.Tensor  # (B,) shaped (and normalised) rewards
    advantages: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # (B, R)
    returns: torch.Tensor | None = None  # (B, R), PPO
    old_values: torch.Tensor | None = None  # (B, R), PPO

    @property
    def tokens(self) -> int:
        return int(self.rollout.response_mask.sum())


@dataclass
class StepOutcome:
    """One RL step as the loop reports it (global sums and means)."""

    loss: float
    grad_norm: float | None
    tokens: float
    samples: float
    metrics: dict[str, float]
    warnings: list[GuardWarning]


class OnlineMethod(FullFineTuning):
    """What PPO, GRPO and RLOO share: rollouts, scoring, KL, guards, evaluation."""

    #: the KL penalty is part of the reward (PPO, RLOO) rather than of the loss (GRPO)
    kl_in_reward = True

    def __init__(self, job: ResolvedJob) -> None:
        super().__init__(job)
        rlhf = job.spec.rlhf
        assert rlhf is not None  # config.check_runnable: resolve() fills every block
        assert rlhf.reward and rlhf.generation and rlhf.kl and rlhf.guards
        self.reward_spec, self.kl_spec, self.guard_spec = rlhf.reward, rlhf.kl, rlhf.guards
        gen = rlhf.generation
        self.generation = GenerationSettings(
            max_new_tokens=gen.max_new_tokens,
            temperature=gen.temperature,
            top_k=gen.top_k,
            top_p=gen.top_p,
            num_return_sequences=gen.samples_per_prompt or 1,
        )
        coefficient = self.kl_spec.coefficient or 0.0
        self.kl_estimator = self.kl_spec.estimator or "k1"
        self.kl_controller: KLController = (
            AdaptiveKLController(
                coefficient, self.kl_spec.adaptive.target, self.kl_spec.adaptive.horizon
            )
            if self.kl_spec.adaptive is not None and self.kl_in_reward
            else FixedKLController(coefficient)
        )
        self.moments = RunningMoments()
        g = self.guard_spec
        self.guards = Guards(
            KLCeilingGuard(g.kl_ceiling, g.kl_ceiling_steps) if g.kl_ceiling else None,
            LengthDriftGuard(g.length_baseline_steps, g.length_drift_ratio, g.length_drift_steps)
            if g.length_drift_ratio
            else None,
            RewardDivergenceGuard(g.divergence_window, DIVERGENCE_MIN_CHANGE, DIVERGENCE_MIN_CHANGE)
            if g.held_out_reward_model
            else None,
        )
        self.tokenizer: Any = None
        self.model_dir: Path | None = None
        self.load_dtype = torch.float32
        self.scorer: Scorer | None = None
        self.heldout: ModelScorer | None = None
        self.reference: nn.Module | None = None
        self.env: DistEnv | None = None
        self.engine: Engine | None = None
        self._saved_state: Path | None = None

    # -- the loop's view -------------------------------------------------------------
    @property
    def updates_per_step(self) -> int:
        """Optimizer updates per RL step (the LR schedule counts these)."""
        return 1

    def check_plan(self, micro_batches_per_rank: int) -> None:
        """Refuse a batch shape the update rule cannot split (before any generation)."""
        return None

    def setup(self, model_dir: Path, tokenizer: Any, load_dtype: torch.dtype) -> None:
        self.tokenizer, self.model_dir, self.load_dtype = tokenizer, model_dir, load_dtype
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise InvalidConfigError(
                "online RL needs a tokenizer with an EOS and a pad token (responses end at EOS)"
            )

    def prepare(self, engine: Engine, data: PreparedData, env: DistEnv, batch: MakeBatch) -> None:
        """Load what scores and anchors the policy: reward, reference, critic, judge."""
        self.env, self.engine = env, engine
        pad = int(self.tokenizer.pad_token_id)
        self.scorer = build_scorer(self.reward_spec, self.load_dtype, pad, env.device)
        if not is_peft_model(engine.unwrapped):
            assert self.model_dir is not None
            reference = self.load_base(self.model_dir, self.load_dtype).to(env.device).eval()
            for param in reference.parameters():
                param.requires_grad_(False)
            self.reference = reference
        if self.guard_spec.held_out_reward_model:
            from kubetune_trainer.models.load import resolve_model_dir

            path = resolve_model_dir(self.guard_spec.held_out_reward_model, what="held-out RM")
            self.heldout = ModelScorer(load_classifier(path, self.load_dtype, pad).to(env.device))
        if self._saved_state is not None:
            self._restore(self._saved_state)

    def loss(self, forward: Forward, model: nn.Module, batch: Any) -> LossOutput:
        raise RuntimeError("online methods train through online_step, not per batch")

    # -- checkpoints -----------------------------------------------------------------
    def save_state(self, directory: Path) -> None:
        torch.save(self._state(), directory / STATE_FILE)

    def load_state(self, directory: Path) -> None:
        # try_resume runs before prepare(): the critic does not exist yet
        self._saved_state = directory

    def _state(self) -> dict[str, Any]:
        return {
            "kl": self.kl_controller.state_dict(),
            "moments": self.moments.state_dict(),
            "guards": self.guards.state_dict(),
        }

    def _restore(self, directory: Path) -> None:
        path = directory / STATE_FILE
        if not path.exists():
            return
        state = torch.load(path, weights_only=True)
        self.kl_controller.load_state_dict(state["kl"])
        self.moments.load_state_dict(state["moments"])
        self.guards.load_state_dict(state["guards"])

    # -- rollouts --------------------------------------------------------------------
    def _generator(self, step: int, salt: int) -> torch.Generator:
        assert self.env is not None
        seed = self.job.spec.hyperparameters.seed
        generator = torch.Generator()
        generator.manual_seed(seed * 1_000_003 + step * 7919 + self.env.rank * 104_729 + salt)
        return generator

    def _decode(self, rollout: Rollout) -> list[str]:
        rows = [
            ids[mask.bool()].tolist()
            for ids, mask in zip(rollout.response_ids, rollout.response_mask, strict=True)
        ]
        return list(self.tokenizer.batch_decode(rows, skip_special_tokens=True))

    @torch.no_grad()
    def roll_out(
        self, policy: nn.Module, prompts: list[EncodedPrompt], generator: torch.Generator
    ) -> tuple[Rollout, torch.Tensor, torch.Tensor, list[str]]:
        """Sample, then score with the reward and the reference: (rollout, raw scores,
        reference log-probs, decoded responses)."""
        assert self.scorer is not None and self.engine is not None and self.env is not None
        k = self.generation.num_return_sequences
        # the engine's mixed precision here too: old and reference log-probs must come from
        # the same numerics as the update's, or the PPO ratio starts away from 1
        engine = self.engine
        with autocast(engine.precision, self.env.device, enabled=engine.uses_autocast):
            rollout = generate_rollouts(
                policy, self.tokenizer, [p.prompt_ids for p in prompts], self.generation, generator
            )
            temperature = self.generation.temperature
            ref = reference_logprobs(policy, rollout, temperature, self.reference)
        texts = self._decode(rollout)
        answers = [p.answer for p in prompts for _ in range(k)]
        raw = self.scorer.score(rollout, texts, answers)
        return rollout, raw, ref, texts

    def _shape(self, raw: torch.Tensor, rollout: Rollout) -> torch.Tensor:
        spec = self.reward_spec
        return shaped_scores(
            raw,
            rollout.response_lengths,
            rollout.ended_with_eos,
            missing_eos_penalty=spec.missing_eos_penalty,
            length_penalty=spec.length_penalty,
            target_length=spec.target_length,
            clip=spec.clip,
        )

    # -- advantages (per method) -----------------------------------------------------
    def advantages(self, chunks: list[Chunk]) -> None:
        raise NotImplementedError

    def chunk_loss(
        self, chunk: Chunk, logprobs: torch.Tensor, clip_range: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Token-mean policy loss of one chunk and its diagnostics."""
        mask = chunk.rollout.response_mask
        out = clipped_policy_loss(
            logprobs, chunk.rollout.old_logprobs, chunk.advantages, mask, clip_range
        )
        loss = out.loss
        stats = {
            "policy/clipfrac": float(out.clipfrac),
            "policy/approxkl": float(out.approx_kl),
            "ratio_mean": float(out.ratio_mean),
        }
        if not self.kl_in_reward and self.kl_controller.value > 0:
            kl = kl_per_token(logprobs, chunk.ref_logprobs, "k3")
            m = mask.to(kl.dtype)
            loss = loss + self.kl_controller.value * (kl * m).sum() / m.sum().clamp(min=1.0)
        return loss, stats

    # -- one RL step -----------------------------------------------------------------
    def online_step(
        self, engine: Engine, micro_batches: list[list[EncodedPrompt]], step: int, update: Update
    ) -> StepOutcome:
        env = self.env
        assert env is not None and self.scorer is not None
        started = time.perf_counter()
        policy = engine.unwrapped
        generator = self._generator(step, 0)
        chunks: list[Chunk] = []
        raw_scores: list[torch.Tensor] = []
        texts_all: list[str] = []
        gen_seconds = 0.0
        for prompts in micro_batches:
            t0 = time.perf_counter()
            rollout, raw, ref, texts = self.roll_out(policy, prompts, generator)
            gen_seconds += time.perf_counter() - t0
            raw_scores.append(raw)
            texts_all.extend(texts)
            chunks.append(Chunk(rollout, ref, self._shape(raw, rollout)))
        if self.reward_spec.normalize:
            gathered = torch.cat(
                [
                    torch.tensor(p)
                    for p in all_gather_objects(torch.cat([c.scores for c in chunks]).tolist(), env)
                ]
            )
            self.moments.update(gathered)
            for chunk in chunks:
                chunk.scores = normalize_scores(chunk.scores, self.moments)
        self.advantages(chunks)
        stats = self.train_on(engine, chunks, step, update)
        stats.update(self._rollout_stats(chunks, raw_scores))
        heldout = self._heldout_score(chunks)
        if heldout is not None:
            stats["heldout_reward/mean"] = heldout
        # the KL controller sees the KL of the batch it just trained on (TRL's order)
        samples = stats["samples"]
        self.kl_controller.update(stats["objective/kl"], int(samples))
        stats["objective/kl_coef"] = self.kl_controller.value
        warnings = self.guards.observe(
            step,
            kl=stats["objective/kl"],
            mean_length=stats["response_length/mean"],
            reward=stats["reward/mean"],
            heldout_score=heldout,
        )
        elapsed = time.perf_counter() - started
        (gen_total, new_tokens) = all_reduce_sum(
            [gen_seconds, float(sum(int(c.rollout.response_lengths.sum()) for c in chunks))], env
        )
        stats["generation/tokens_per_second"] = new_tokens / max(gen_total / env.world_size, 1e-9)
        stats["generation/time_share"] = min(1.0, (gen_total / env.world_size) / max(elapsed, 1e-9))
        tokens = stats.pop("tokens")
        loss = stats.pop("loss")
        grad_norm = stats.pop("grad_norm", None)
        return StepOutcome(
            loss=loss,
            grad_norm=None if grad_norm is None or math.isnan(grad_norm) else grad_norm,
            tokens=tokens,
            samples=stats.pop("samples"),
            metrics=stats,
            warnings=warnings,
        )

    def _rollout_stats(self, chunks: list[Chunk], raw: list[torch.Tensor]) -> dict[str, float]:
        """Global means of the rollouts: reward, KL to the reference, length, EOS share."""
        assert self.env is not None
        scores = torch.cat(raw).double()
        seq_kl = torch.cat(
            [(c.rollout.old_logprobs - c.ref_logprobs).sum(dim=1) for c in chunks]
        ).double()
        lengths = torch.cat([c.rollout.response_lengths for c in chunks]).double()
        ended = torch.cat([c.rollout.ended_with_eos for c in chunks]).double()
        n, s, s2, kl, length, eos = all_reduce_sum(
            [
                float(scores.numel()),
                float(scores.sum()),
                float((scores**2).sum()),
                float(seq_kl.sum()),
                float(lengths.sum()),
                float(ended.sum()),
            ],
            self.env,
        )
        mean = s / n
        var = max(0.0, s2 / n - mean * mean) * n / max(n - 1, 1)
        return {
            "reward/mean": mean,
            "reward/std": math.sqrt(var),
            "objective/kl": kl / n,
            "response_length/mean": length / n,
            "response/eos_share": eos / n,
        }

    def _heldout_score(self, chunks: list[Chunk]) -> float | None:
        if self.heldout is None:
            return None
        assert self.env is not None
        total = [0.0, 0.0]
        for chunk in chunks:
            scores = self.heldout.score(chunk.rollout, [], [])
            total[0] += float(scores.sum())
            total[1] += scores.numel()
        s, n = all_reduce_sum(total, self.env)
        return s / max(n, 1.0)

    # -- the update ------------------------------------------------------------------
    def clip_range(self) -> float:
        raise NotImplementedError

    def epochs(self) -> int:
        return 1

    def mini_batches(self, chunks: list[Chunk], epoch: int, step: int) -> list[list[Chunk]]:
        return [chunks]

    def value_update(self, chunk: Chunk, weight: float) -> dict[str, float]:
        return {}

    def train_on(
        self, engine: Engine, chunks: list[Chunk], step: int, update: Update
    ) -> dict[str, float]:
        """``epochs`` passes of mini-batch updates; returns global sums/means."""
        env = self.env
        assert env is not None
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        losses: list[float] = []
        grad_norm: float | None = None
        planned = self.updates_per_step
        done = 0
        stop = False
        clip = self.clip_range()
        for epoch in range(self.epochs()):
            for group in self.mini_batches(chunks, epoch, step):
                (group_tokens,) = all_reduce_sum([float(sum(c.tokens for c in group))], env)
                loss_value = 0.0
                kl_sum = 0.0
                for index, chunk in enumerate(group):
                    last = index == len(group) - 1
                    weight = chunk.tokens * env.world_size / max(group_tokens, 1.0)
                    with engine.sync_context(last):
                        logits = response_logits(
                            engine.forward, chunk.rollout, self.generation.temperature
                        )
                        logprobs = masked_logprobs(logits, chunk.rollout)
                        loss, stats = self.chunk_loss(chunk, logprobs, clip)
                        exploded = ratio_exploded(stats["ratio_mean"], self.ratio_threshold())
                        if exploded:  # TRL's ratio_threshold: no step from a broken batch
                            loss = loss * 0.0
                        stats["policy/skipped_share"] = float(exploded)
                        engine.backward(loss * weight, last)
                    if epoch == 0:
                        with torch.no_grad():
                            mask = chunk.rollout.response_mask.bool()
                            entropy = entropy_from_logits(logits.detach()[mask])
                        stats["objective/entropy"] = (
                            float(entropy.mean()) if entropy.numel() else 0.0
                        )
                    stats.update(self.value_update(chunk, weight))
                    loss_value += float(loss.detach()) * chunk.tokens
                    kl_sum += stats["policy/approxkl"] * chunk.tokens
                    for key, value in stats.items():
                        if math.isnan(value):
                            continue
                        sums[key] = sums.get(key, 0.0) + value * chunk.tokens
                        counts[key] = counts.get(key, 0.0) + chunk.tokens
                (total_loss, total_kl) = all_reduce_sum([loss_value, kl_sum], env)
                losses.append(total_loss / max(group_tokens, 1.0))
                grad_norm = update(losses[-1])
                self.after_update()
                done += 1
                if self.stop_early(total_kl / max(group_tokens, 1.0)):
                    stop = True
                    break
            if stop:
                break
        if engine.name != "deepspeed":  # its step() would apply (zero) gradients
            for _ in range(planned - done):  # keep the LR schedule aligned with the plan
                engine.skip_step()
        keys = sorted(sums)
        reduced = all_reduce_sum([sums[k] for k in keys] + [counts[k] for k in keys], env)
        means = {k: reduced[i] / max(reduced[len(keys) + i], 1.0) for i, k in enumerate(keys)}
        means.pop("ratio_mean", None)
        local = [
            float(sum(c.tokens + int(c.rollout.prompt_mask.sum()) for c in chunks)),
            float(sum(c.rollout.response_ids.shape[0] for c in chunks)),
        ]
        tokens, samples = all_reduce_sum(local, env)
        means.update(
            loss=sum(losses) / max(len(losses), 1),
            grad_norm=grad_norm if grad_norm is not None else math.nan,
            tokens=tokens,
            samples=samples,
            updates=float(done),
        )
        return means

    def ratio_threshold(self) -> float:
        return math.inf

    def after_update(self) -> None:
        return None

    def stop_early(self, approx_kl: float) -> bool:
        return False

    # -- evaluation: mean reward on held-out prompts ---------------------------------
    @torch.no_grad()
    def evaluate_prompts(self, engine: Engine, examples: list[EncodedPrompt]) -> dict[str, float]:
        """Mean reward, KL to the reference and length of one sample per held-out prompt.

        The same seed for every evaluation, so base and tuned see the same random stream;
        ``loss`` is the negated mean reward (lower is better, as for every method)."""
        from kubetune_trainer.data.batching import eval_micro_batches

        env = self.env
        assert env is not None
        micro = self.job.spec.hyperparameters.micro_batch_size
        single = GenerationSettings(
            max_new_tokens=self.generation.max_new_tokens,
            temperature=self.generation.temperature,
            top_k=self.generation.top_k,
            top_p=self.generation.top_p,
        )
        saved, self.generation = self.generation, single
        totals = [0.0, 0.0, 0.0, 0.0]
        generator = self._generator(-1, 1)
        try:
            for ids in eval_micro_batches(len(examples), micro, env.world_size, env.rank):
                if not ids:
                    continue
                prompts = [examples[i] for i in ids]
                rollout, raw, ref, _ = self.roll_out(engine.unwrapped, prompts, generator)
                totals[0] += float(raw.sum())
                totals[1] += float((rollout.old_logprobs - ref).sum())
                totals[2] += float(rollout.response_lengths.sum())
                totals[3] += raw.numel()
        finally:
            self.generation = saved
        reward, kl, length, count = all_reduce_sum(totals, env)
        n = max(count, 1.0)
        return {
            "loss": -reward / n,
            "reward_mean": reward / n,
            "kl": kl / n,
            "response_length_mean": length / n,
            "prompts": count,
        }

    def eval_metrics(self, totals: dict[str, float]) -> dict[str, float]:
        return totals

    @contextlib.contextmanager
    def base_behaviour(self, model: nn.Module) -> Iterator[None]:
        yield


class PpoMethod(OnlineMethod):
    """PPO with a value model and GAE (Ouyang et al. 2022; TRL 0.11 ``PPOTrainer``)."""

    name = "ppo"

    def __init__(self, job: ResolvedJob) -> None:
        super().__init__(job)
        rlhf = job.spec.rlhf
        assert rlhf is not None and rlhf.ppo is not None
        self.settings: PpoSettings = rlhf.ppo
        self.critic: Critic | None = None

    @property
    def updates_per_step(self) -> int:
        return self.settings.epochs * self.settings.mini_batches

    def check_plan(self, micro_batches_per_rank: int) -> None:
        if micro_batches_per_rank % self.settings.mini_batches:
            raise InvalidConfigError(
                f"rlhf.ppo.miniBatches {self.settings.mini_batches} must divide the "
                f"micro-batches per process ({micro_batches_per_rank} = globalBatchSize / "
                "(microBatchSize x processes))"
            )

    def prepare(self, engine: Engine, data: PreparedData, env: DistEnv, batch: MakeBatch) -> None:
        assert self.model_dir is not None
        from kubetune_trainer.models.load import resolve_model_dir

        source = self.settings.value_model or self.reward_spec.model
        path = resolve_model_dir(source, what="value model") if source else self.model_dir
        pad = int(self.tokenizer.pad_token_id)
        hp = self.job.spec.hyperparameters
        lr = self.settings.value_learning_rate or 10.0 * float(hp.learning_rate or 1e-6)
        # every rank must start from the same critic: a new score head is drawn from the
        # RNG, which the loop has already seeded per rank for sampling
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hp.seed)
            critic = load_classifier(path, torch.float32, pad)
        self.critic = Critic(critic, env, lr, hp.max_grad_norm)
        super().prepare(engine, data, env, batch)

    def _restore(self, directory: Path) -> None:
        super()._restore(directory)
        if self.critic is not None:
            self.critic.load(directory)

    def save_state(self, directory: Path) -> None:
        super().save_state(directory)
        if self.critic is not None:
            self.critic.save(directory)

    def clip_range(self) -> float:
        return self.settings.clip_range

    def epochs(self) -> int:
        return self.settings.epochs

    def ratio_threshold(self) -> float:
        return self.settings.ratio_threshold

    def mini_batches(self, chunks: list[Chunk], epoch: int, step: int) -> list[list[Chunk]]:
        order = torch.randperm(len(chunks), generator=self._generator(step, 100 + epoch))
        shuffled = [chunks[int(i)] for i in order]
        size = len(chunks) // self.settings.mini_batches
        return [shuffled[i : i + size] for i in range(0, len(shuffled), size)]

    def advantages(self, chunks: list[Chunk]) -> None:
        assert self.critic is not None
        for chunk in chunks:
            with torch.no_grad():
                chunk.old_values = self.critic.values(chunk.rollout)
            mask = chunk.rollout.response_mask
            rewards, _ = kl_penalized_rewards(
                chunk.scores,
                chunk.rollout.old_logprobs,
                chunk.ref_logprobs,
                mask,
                self.kl_controller.value,
                self.kl_estimator,
            )
            chunk.advantages, chunk.returns = gae(
                rewards, chunk.old_values, mask, self.settings.gamma, self.settings.lam
            )
        if self.settings.whiten_advantages:
            # whiten over every response token of this rank's batch (TRL): pad to one width
            width = max(c.advantages.shape[1] for c in chunks)

            def pad(x: torch.Tensor) -> torch.Tensor:
                return torch.nn.functional.pad(x, (0, width - x.shape[1]))

            adv = torch.cat([pad(c.advantages) for c in chunks])
            mask = torch.cat([pad(c.rollout.response_mask) for c in chunks])
            white = masked_whiten(adv, mask)
            offset = 0
            for chunk in chunks:
                rows, cols = chunk.advantages.shape
                chunk.advantages = white[offset : offset + rows, :cols]
                offset += rows

    def value_update(self, chunk: Chunk, weight: float) -> dict[str, float]:
        assert self.critic is not None
        assert chunk.old_values is not None and chunk.returns is not None
        values = self.critic.values(chunk.rollout)
        mask = chunk.rollout.response_mask
        out = clipped_value_loss(
            values, chunk.old_values, chunk.returns, mask, self.settings.value_clip_range
        )
        (out.loss * weight).backward()
        return {
            "critic/vf_loss": float(out.loss.detach()),
            "critic/vf_clipfrac": float(out.vf_clipfrac),
            "critic/vf_explained_var": explained_variance(values, chunk.returns, mask),
        }

    def after_update(self) -> None:
        assert self.critic is not None
        self.critic.step()

    def stop_early(self, approx_kl: float) -> bool:
        target = self.settings.target_kl
        return target is not None and approx_kl > TARGET_KL_MARGIN * target


class _GroupMethod(OnlineMethod):
    """GRPO and RLOO: the other samples of the prompt are the baseline; no value model."""

    def __init__(self, job: ResolvedJob, settings: GroupSettings | None) -> None:
        super().__init__(job)
        assert settings is not None
        self.settings = settings

    @property
    def updates_per_step(self) -> int:
        return self.settings.epochs

    def clip_range(self) -> float:
        return self.settings.clip_range

    def epochs(self) -> int:
        return self.settings.epochs

    def broadcast(self, chunk: Chunk, per_sequence: torch.Tensor) -> None:
        mask = chunk.rollout.response_mask.to(per_sequence.dtype)
        chunk.advantages = per_sequence.unsqueeze(1) * mask


class GrpoMethod(_GroupMethod):
    """GRPO (Shao et al. 2024): group-normalised rewards, ``beta * k3`` KL in the loss."""

    name = "grpo"
    kl_in_reward = False

    def __init__(self, job: ResolvedJob) -> None:
        assert job.spec.rlhf is not None
        super().__init__(job, job.spec.rlhf.grpo)

    def advantages(self, chunks: list[Chunk]) -> None:
        k = self.generation.num_return_sequences
        for chunk in chunks:
            advantages = group_relative_advantages(
                chunk.scores, k, "group_std" if self.settings.scale_rewards else "none"
            )
            self.broadcast(chunk, advantages)


class RlooMethod(_GroupMethod):
    """RLOO (Ahmadian et al. 2024): reward minus the mean of the prompt's other samples,
    with the sequence KL to the reference subtracted from the reward."""

    name = "rloo"

    def __init__(self, job: ResolvedJob) -> None:
        assert job.spec.rlhf is not None
        super().__init__(job, job.spec.rlhf.rloo)

    def advantages(self, chunks: list[Chunk]) -> None:
        k = self.generation.num_return_sequences
        for chunk in chunks:
            kl = kl_per_token(chunk.rollout.old_logprobs, chunk.ref_logprobs, self.kl_estimator)
            kl = torch.where(chunk.rollout.response_mask.bool(), kl, 0.0).sum(dim=1)
            rewards = chunk.scores - self.kl_controller.value * kl
            self.broadcast(chunk, leave_one_out_advantages(rewards, k))
