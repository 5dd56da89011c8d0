"""Reward-model training on preference pairs (the objective of TRL's RewardTrainer).

The base decoder gets a scalar score head (``AutoModelForSequenceClassification`` with
one label, scoring the last non-padding token) and learns ``-log sigmoid(r_chosen -
r_rejected)`` (Bradley-Terry). Batches are padded because the score is pooled from
each row's last token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kubetune_trainer.data.batching import Batch
from kubetune_trainer.methods.base import (
    Forward,
    LossOutput,
    Method,
    save_whole_model,
)
from kubetune_trainer.models.load import load_sequence_classifier


class RewardModelMethod(Method):
    name = "reward"
    disable_dropout = True  # TRL's default for this trainer

    def build(self, model_dir: Path, tokenizer: Any, load_dtype: torch.dtype) -> nn.Module:
        return load_sequence_classifier(
            model_dir,
            dtype=load_dtype,
            pad_token_id=int(tokenizer.pad_token_id),
            trust_remote_code=self.job.spec.model.trust_remote_code,
        )

    def scores(self, forward: Forward, batch: Batch) -> torch.Tensor:
        out = forward(**batch.inputs, use_cache=False)
        return out.logits.squeeze(-1).float()

    def loss(self, forward: Forward, model: nn.Module, batch: Batch) -> LossOutput:
        if batch.pair_weights is None:
            raise RuntimeError("reward batches need pair weights")
        rewards = self.scores(forward, batch)
        n = batch.num_sequences // 2
        weights = batch.pair_weights.to(rewards.device)
        chosen, rejected = rewards[:n], rewards[n:]
        per_pair = -F.logsigmoid(chosen - rejected)
        loss_sum = (per_pair * weights).sum()
        with torch.no_grad():
            metrics = {
                "accuracy": float(((chosen > rejected).float() * weights).sum()),
                "margin": float(((chosen - rejected) * weights).sum()),
            }
        return LossOutput(loss_sum, float(weights.sum()), metrics)

    def eval_metrics(self, totals: dict[str, float]) -> dict[str, float]:
        pairs = max(totals.get("count", 0.0), 1.0)
        loss = totals.get("loss", 0.0) / pairs
        return {
            "loss": loss,
            "accuracy": totals.get("accuracy", 0.0) / pairs,
            "margin": totals.get("margin", 0.0) / pairs,
            "pairs": totals.get("count", 0.0),
        }

    def save(
        self, model: nn.Module, state_dict: dict[str, torch.Tensor], out_dir: Path, tokenizer: Any
    ) -> None:
        save_whole_model(model, state_dict, out_dir, tokenizer)

    def load_trained(self, base_dir: Path, trained_dir: Path) -> nn.Module:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(trained_dir, dtype=torch.float32)
