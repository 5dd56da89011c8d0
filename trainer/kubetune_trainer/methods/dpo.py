"""Direct preference optimisation (the loss of TRL's ``DPOTrainer``), in our loop.

The policy is the full model, or a LoRA adapter on the frozen base with ``peft.lora``
(``methods/policy.py``). The reference log-probabilities are computed once, before the
first step, with the untouched policy (a LoRA policy: the base with the adapter
disabled) or ``rlhf.dpo.referenceModel`` when given, and kept per pair (two floats each;
saved in checkpoints), as TRL does with ``precompute_ref_log_probs``
(``methods/reference.py``): no frozen second model occupies memory during training.
Losses follow TRL 1.16 ``DPOTrainer._compute_loss`` exactly: ``sigmoid`` (the DPO
paper), ``hinge`` (SLiC) and ``ipo`` (per-token averaged log-ratios);
``tests/trainer/test_dpo_matches_trl.py`` checks the loss and per-pair log-probs against
TRL on the batches a DPO job trains on. Pairs are not packed: chosen and rejected rows are
right-padded to the longest row of the micro-batch, as in TRL (the API refuses
``dataset.packing`` for preference methods). Dropout is off (``disable_dropout``), as
TRL's ``DPOConfig`` defaults to.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from kubetune.api.resolve import ResolvedJob
from kubetune.api.rlhf import DpoSettings
from kubetune_trainer.data.batching import Batch
from kubetune_trainer.methods.base import Forward, LossOutput, MakeBatch
from kubetune_trainer.methods.full import FullFineTuning
from kubetune_trainer.methods.reference import precompute_reference

if TYPE_CHECKING:
    from kubetune_trainer.data.validate import PreparedData
    from kubetune_trainer.distributed.env import DistEnv
    from kubetune_trainer.distributed.strategy import Engine

REFERENCE_FILE = "reference_logps.pt"


def dpo_losses(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    loss_type: str,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair DPO loss (same formulas as TRL's DPOTrainer)."""
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * delta)
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta)
    if loss_type == "ipo":
        assert chosen_tokens is not None and rejected_tokens is not None
        ipo_delta = chosen_ratio / chosen_tokens.clamp(
            min=1.0
        ) - rejected_ratio / rejected_tokens.clamp(min=1.0)
        return (ipo_delta - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown DPO loss type {loss_type!r}")


class DpoMethod(FullFineTuning):
    name = "dpo"
    disable_dropout = True  # TRL's default for this trainer

    def __init__(self, job: ResolvedJob) -> None:
        super().__init__(job)
        rlhf = job.spec.rlhf
        assert rlhf is not None and rlhf.dpo is not None  # config.check_runnable
        self.settings: DpoSettings = rlhf.dpo
        #: split -> [units, 2] reference log-probs of (chosen, rejected); in checkpoints
        self.reference: dict[str, torch.Tensor] = {}

    # -- reference log-probs --------------------------------------------------------
    def prepare(self, engine: Engine, data: PreparedData, env: DistEnv, batch: MakeBatch) -> None:
        """Log-probs of the reference policy for every pair, once, sharded by rank."""
        if self.reference:  # restored from a checkpoint
            return

        def columns(forward: Forward, model: nn.Module, pairs: Batch) -> torch.Tensor:
            logps, _ = self.sequence_logps(forward, model, pairs)
            n = pairs.num_sequences // 2
            return torch.stack([logps[:n], logps[n:]], dim=1)

        self.reference = precompute_reference(
            self, engine, data, env, batch, columns, 2, self.settings.reference_model
        )

    def attach(self, batch: Batch, split: str) -> None:
        if split in self.reference:
            batch.reference = self.reference[split][batch.unit_ids]

    def save_state(self, directory: Path) -> None:
        if self.reference:
            torch.save(self.reference, directory / REFERENCE_FILE)

    def load_state(self, directory: Path) -> None:
        if (directory / REFERENCE_FILE).exists():
            self.reference = torch.load(directory / REFERENCE_FILE, weights_only=True)

    def sequence_logps(
        self, forward: Forward, model: nn.Module, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probs of every sequence ([chosen..., rejected...]) and their lengths."""
        lp = self.logprobs(forward, model, batch)
        return lp.per_sequence(), lp.tokens_per_sequence()

    def loss(self, forward: Forward, model: nn.Module, batch: Batch) -> LossOutput:
        if batch.reference is None or batch.pair_weights is None:
            raise RuntimeError("DPO batches need reference log-probs and pair weights")
        logps, tokens = self.sequence_logps(forward, model, batch)
        n = batch.num_sequences // 2
        weights = batch.pair_weights.to(logps.device)
        chosen, rejected = logps[:n], logps[n:]
        ref = batch.reference.to(logps.device, logps.dtype)
        per_pair = dpo_losses(
            chosen,
            rejected,
            ref[:, 0],
            ref[:, 1],
            beta=self.settings.beta,
            loss_type=self.settings.loss_type,
            chosen_tokens=tokens[:n],
            rejected_tokens=tokens[n:],
        )
        loss_sum = (per_pair * weights).sum()
        with torch.no_grad():
            chosen_reward = self.settings.beta * (chosen - ref[:, 0])
            rejected_reward = self.settings.beta * (rejected - ref[:, 1])
            metrics = {
                "reward_accuracy": float(
                    ((chosen_reward > rejected_reward).float() * weights).sum()
                ),
                "reward_margin": float(((chosen_reward - rejected_reward) * weights).sum()),
                "chosen_nll": float((-chosen * weights).sum()),
                "chosen_tokens": float((tokens[:n] * weights).sum()),
            }
        return LossOutput(loss_sum, float(weights.sum()), metrics)

    def eval_metrics(self, totals: dict[str, float]) -> dict[str, float]:
        pairs = max(totals.get("count", 0.0), 1.0)
        tokens = max(totals.get("chosen_tokens", 0.0), 1.0)
        chosen_nll = totals.get("chosen_nll", 0.0) / tokens
        return {
            "loss": totals.get("loss", 0.0) / pairs,
            "reward_accuracy": totals.get("reward_accuracy", 0.0) / pairs,
            "reward_margin": totals.get("reward_margin", 0.0) / pairs,
            "chosen_nll_per_token": chosen_nll,
            "perplexity": math.exp(min(chosen_nll, 50.0)),
            "pairs": totals.get("count", 0.0),
        }
