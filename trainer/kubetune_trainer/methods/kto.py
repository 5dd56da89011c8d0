"""Kahneman-Tversky optimisation (the ``kto`` loss of TRL 1.16 ``KTOTrainer``), in our loop.

Each example is one completion labelled desirable or undesirable (format ``unpaired``;
preference pairs are unpaired into one of each). With the policy/reference log-ratio
``r = log pi(y|x) - log ref(y|x)`` and the reference point ``z0``, a desirable example
costs ``w_d * (1 - sigmoid(beta * (r - z0)))`` and an undesirable one
``w_u * (1 - sigmoid(beta * (z0 - r)))``; the batch loss is their mean. ``z0`` estimates
KL(policy || reference) from mismatched sequences (each prompt with another example's
completion): the batch mean of their log-ratios, clamped at 0 and detached, as TRL does.
TRL also averages it over the ranks; here it is each rank's micro-batch mean.

The reference log-probs of both the completion and the KL sequence are computed once
before training and kept per example (saved in checkpoints), like DPO's. The reference
is the base model (with a LoRA policy: the base with the adapter disabled).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from kubetune.api.resolve import ResolvedJob
from kubetune.api.rlhf import KtoSettings
from kubetune_trainer.data.batching import Batch
from kubetune_trainer.data.encode import EncodedUnpaired, with_kl_completions
from kubetune_trainer.methods.base import Forward, LossOutput, MakeBatch
from kubetune_trainer.methods.full import FullFineTuning
from kubetune_trainer.methods.reference import precompute_reference

if TYPE_CHECKING:
    from kubetune_trainer.data.validate import PreparedData
    from kubetune_trainer.distributed.env import DistEnv
    from kubetune_trainer.distributed.strategy import Engine

REFERENCE_FILE = "kto_reference_logps.pt"


def kto_losses(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    *,
    beta: float,
    desirable_weight: float,
    undesirable_weight: float,
) -> torch.Tensor:
    """Per-example KTO loss, weighted (TRL's ``loss_type="kto"``, Eq. 7 of the paper)."""
    logratios = logps - ref_logps
    chosen = desirable_weight * (1 - F.sigmoid(beta * (logratios - kl)))
    rejected = undesirable_weight * (1 - F.sigmoid(beta * (kl - logratios)))
    return torch.where(desirable, chosen, rejected)


def kl_reference_point(
    kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """z0: mean log-ratio of the mismatched sequences, clamped at 0, without gradient."""
    total = weights.sum()
    if float(total) == 0.0:  # a dummy micro-batch
        return torch.zeros((), device=kl_logps.device, dtype=kl_logps.dtype)
    mean = ((kl_logps - ref_kl_logps) * weights).sum() / total
    return mean.detach().clamp(min=0)


class KtoMethod(FullFineTuning):
    name = "kto"
    disable_dropout = True  # TRL's default for this trainer

    def __init__(self, job: ResolvedJob) -> None:
        super().__init__(job)
        rlhf = job.spec.rlhf
        assert rlhf is not None and rlhf.kto is not None  # config.check_runnable
        self.settings: KtoSettings = rlhf.kto
        #: split -> [units, 2] reference log-probs of (completion, KL sequence); in checkpoints
        self.reference: dict[str, torch.Tensor] = {}

    def prepare(self, engine: Engine, data: PreparedData, env: DistEnv, batch: MakeBatch) -> None:
        """Pair every example with its KL sequence, then the reference log-probs, once."""
        max_len = self.job.spec.dataset.max_seq_length
        for split in (data.train, data.eval):
            if split is None:
                continue
            unpaired = [e for e in split.examples if isinstance(e, EncodedUnpaired)]
            if len(unpaired) != len(split.examples):
                raise RuntimeError("KTO trains on unpaired examples (format unpaired/preference)")
            split.examples[:] = with_kl_completions(unpaired, max_len)
        if self.reference:  # restored from a checkpoint
            return

        def columns(forward: Forward, model: nn.Module, examples: Batch) -> torch.Tensor:
            assert examples.kl is not None
            logps = self.sequence_logps(forward, model, examples)
            kl_logps = self.sequence_logps(forward, model, examples.kl)
            return torch.stack([logps, kl_logps], dim=1)

        self.reference = precompute_reference(self, engine, data, env, batch, columns, 2)

    def attach(self, batch: Batch, split: str) -> None:
        if split in self.reference:
            batch.reference = self.reference[split][batch.unit_ids]

    def save_state(self, directory: Path) -> None:
        if self.reference:
            torch.save(self.reference, directory / REFERENCE_FILE)

    def load_state(self, directory: Path) -> None:
        if (directory / REFERENCE_FILE).exists():
            self.reference = torch.load(directory / REFERENCE_FILE, weights_only=True)

    def sequence_logps(self, forward: Forward, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Summed log-probs of the completion of every sequence of ``batch``."""
        return self.logprobs(forward, model, batch).per_sequence()

    def loss(self, forward: Forward, model: nn.Module, batch: Batch) -> LossOutput:
        if (
            batch.reference is None
            or batch.pair_weights is None
            or batch.desirable is None
            or batch.kl is None
        ):
            raise RuntimeError("KTO batches need labels, KL sequences and reference log-probs")
        with torch.no_grad():
            kl_logps = self.sequence_logps(forward, model, batch.kl)
        lp = self.logprobs(forward, model, batch)
        logps, tokens = lp.per_sequence(), lp.tokens_per_sequence()
        weights = batch.pair_weights.to(logps.device)
        desirable = batch.desirable.to(logps.device)
        ref = batch.reference.to(logps.device, logps.dtype)
        kl = kl_reference_point(kl_logps, ref[:, 1], weights)
        s = self.settings
        per_example = kto_losses(
            logps,
            ref[:, 0],
            desirable,
            kl,
            beta=s.beta,
            desirable_weight=s.desirable_weight,
            undesirable_weight=s.undesirable_weight,
        )
        loss_sum = (per_example * weights).sum()
        with torch.no_grad():
            rewards = s.beta * (logps - ref[:, 0])
            good = desirable.float() * weights
            bad = (~desirable).float() * weights
            metrics = {
                "kl": float(kl) * float(weights.sum()),
                "desirable": float(good.sum()),
                "desirable_reward": float((rewards * good).sum()),
                "undesirable_reward": float((rewards * bad).sum()),
                "desirable_nll": float((-logps * good).sum()),
                "desirable_tokens": float((tokens * good).sum()),
            }
        return LossOutput(loss_sum, float(weights.sum()), metrics)

    def eval_metrics(self, totals: dict[str, float]) -> dict[str, float]:
        examples = max(totals.get("count", 0.0), 1.0)
        good = totals.get("desirable", 0.0)
        bad = totals.get("count", 0.0) - good
        nll = totals.get("desirable_nll", 0.0) / max(totals.get("desirable_tokens", 0.0), 1.0)
        return {
            "loss": totals.get("loss", 0.0) / examples,
            "kl": totals.get("kl", 0.0) / examples,
            "desirable_reward": totals.get("desirable_reward", 0.0) / max(good, 1.0),
            "undesirable_reward": totals.get("undesirable_reward", 0.0) / max(bad, 1.0),
            "desirable_nll_per_token": nll,
            "perplexity": math.exp(min(nll, 50.0)),
            "examples": totals.get("count", 0.0),
        }
