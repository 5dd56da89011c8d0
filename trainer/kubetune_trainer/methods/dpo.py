"""Direct preference optimisation (the loss of TRL's ``DPOTrainer``), in our loop.

The policy is the full model. The reference log-probabilities are computed once,
before the first step, with the untouched policy (or ``rlhf.dpo.referenceModel`` when
given) and kept per pair (two floats each; saved in checkpoints), as TRL does with
``precompute_ref_log_probs``: no frozen second model occupies memory during training.
Losses follow TRL 1.16 ``DPOTrainer._compute_loss`` exactly: ``sigmoid`` (the DPO
paper), ``hinge`` (SLiC) and ``ipo`` (per-token averaged log-ratios);
``tests/trainer/test_dpo.py`` checks the numbers against TRL on the same batch.
Pairs are run padding-free (chosen and rejected flattened into one row with positions
reset per sequence), which the preference methods of TRL do not do.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kubetune_trainer.config import DpoSettings
from kubetune_trainer.data.batching import Batch
from kubetune_trainer.methods.base import Forward, LossOutput
from kubetune_trainer.methods.full import FullFineTuning


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
    normalizer = "pairs"

    @property
    def settings(self) -> DpoSettings:
        return self.cfg.dpo or DpoSettings()

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

    def load_reference(self, path: Path) -> nn.Module:
        """A separate reference policy (``rlhf.dpo.referenceModel``)."""
        from kubetune_trainer.models.load import load_causal_lm

        return load_causal_lm(
            path,
            dtype=torch.float32,
            trust_remote_code=self.cfg.model.trust_remote_code,
            attn_implementation=self.attn_implementation,
        )

    def build(self, model_dir: Path, tokenizer: Any, load_dtype: torch.dtype) -> nn.Module:
        return super().build(model_dir, tokenizer, load_dtype)
