"""Odds-ratio preference optimisation (TRL 1.16 ``trl.experimental.orpo``), in our loop.

One stage, no reference model: ``loss = NLL(chosen) - beta * log sigmoid(log_odds)``
where ``log_odds = (c - r) - (log(1 - e^c) - log(1 - e^r))`` with ``c``/``r`` the mean
per-token log-probs of the chosen/rejected completions (TRL's ``odds_ratio_loss``).
The NLL is the token mean over the micro-batch's chosen completions, as TRL's
``CrossEntropyLoss`` computes it, but on the completion tokens only: TRL also scores the
prompt there, while the paper's SFT term (Eq. 2) is the NLL of the response given the
prompt, which is what ``completionOnlyLoss`` means everywhere else in kubetune.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kubetune.api.resolve import ResolvedJob
from kubetune.api.rlhf import OrpoSettings
from kubetune_trainer.data.batching import Batch
from kubetune_trainer.methods.base import Forward, LossOutput
from kubetune_trainer.methods.full import FullFineTuning


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2 (TRL's helper)."""
    t = -0.6931471805599453
    return torch.where(x < t, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def odds_ratio_terms(
    chosen_logps: torch.Tensor, rejected_logps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair: log sigmoid(log odds ratio) and the log odds ratio (mean log-probs in)."""
    chosen_logps, rejected_logps = chosen_logps.float(), rejected_logps.float()
    log_odds = (chosen_logps - rejected_logps) - (log1mexp(chosen_logps) - log1mexp(rejected_logps))
    return F.logsigmoid(log_odds), log_odds


class OrpoMethod(FullFineTuning):
    name = "orpo"
    disable_dropout = True  # TRL's default for this trainer

    def __init__(self, job: ResolvedJob) -> None:
        super().__init__(job)
        rlhf = job.spec.rlhf
        assert rlhf is not None and rlhf.orpo is not None  # config.check_runnable
        self.settings: OrpoSettings = rlhf.orpo

    def loss(self, forward: Forward, model: nn.Module, batch: Batch) -> LossOutput:
        if batch.pair_weights is None:
            raise RuntimeError("ORPO batches need preference pairs")
        lp = self.logprobs(forward, model, batch)
        weights = batch.pair_weights.to(lp.logprobs.device)
        pairs = float(weights.sum())
        if pairs == 0.0:  # a dummy micro-batch: every parameter still sees a (zero) gradient
            return LossOutput(lp.logprobs.sum() * 0.0, 0.0, {})
        sums, tokens = lp.per_sequence(), lp.tokens_per_sequence()
        n = batch.num_sequences // 2
        mean = sums / tokens.clamp(min=1.0)
        ratio, log_odds = odds_ratio_terms(mean[:n], mean[n:])
        chosen_nll = -(sums[:n] * weights).sum()
        chosen_tokens = (tokens[:n] * weights).sum().clamp(min=1.0)
        # the micro-batch's token-mean NLL counts once per pair: the loop divides by pairs
        nll_mean = chosen_nll / chosen_tokens
        loss_sum = pairs * nll_mean - self.settings.beta * (ratio * weights).sum()
        with torch.no_grad():
            metrics = {
                "nll": float(nll_mean) * pairs,
                "log_odds_ratio": float((log_odds * weights).sum()),
                "odds_ratio_loss": float((-self.settings.beta * ratio * weights).sum()),
                "accuracy": float(((mean[:n] > mean[n:]).float() * weights).sum()),
                "chosen_nll": float(chosen_nll),
                "chosen_tokens": float(chosen_tokens),
            }
        return LossOutput(loss_sum, pairs, metrics)

    def eval_metrics(self, totals: dict[str, float]) -> dict[str, float]:
        pairs = max(totals.get("count", 0.0), 1.0)
        nll = totals.get("chosen_nll", 0.0) / max(totals.get("chosen_tokens", 0.0), 1.0)
        return {
            "loss": totals.get("loss", 0.0) / pairs,
            "log_odds_ratio": totals.get("log_odds_ratio", 0.0) / pairs,
            "odds_ratio_loss": totals.get("odds_ratio_loss", 0.0) / pairs,
            "reward_accuracy": totals.get("accuracy", 0.0) / pairs,
            "chosen_nll_per_token": nll,
            "perplexity": math.exp(min(nll, 50.0)),
            "pairs": totals.get("count", 0.0),
        }
