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
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from kubetune.api.resolve import ResolvedJob
from kubetune.api.rlhf import DpoSettings
from kubetune_trainer.data.batching import Batch, eval_micro_batches
from kubetune_trainer.distributed.env import all_gather_objects
from kubetune_trainer.methods.base import Forward, LossOutput, MakeBatch
from kubetune_trainer.methods.full import FullFineTuning

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
        ref_uri = self.settings.reference_model
        if ref_uri:
            from kubetune_trainer.models.load import resolve_model_dir

            ref_model = self.load_reference(resolve_model_dir(ref_uri, what="reference model"))
            ref_model.to(env.device).eval()
            forward: Forward = ref_model
            module: nn.Module = ref_model
        else:
            engine.eval()
            forward, module = engine.forward, engine.model
        splits = {"train": data.train.examples}
        if data.eval is not None:
            splits["eval"] = data.eval.examples
        micro = self.job.spec.hyperparameters.micro_batch_size
        reference: dict[str, torch.Tensor] = {}
        for split, examples in splits.items():
            rows: list[tuple[int, float, float]] = []
            with torch.no_grad():
                for ids in eval_micro_batches(len(examples), micro, env.world_size, env.rank):
                    pairs = batch(examples, ids, "none")
                    logps, _ = self.sequence_logps(forward, module, pairs)
                    n = pairs.num_sequences // 2
                    for k, unit in enumerate(ids):
                        rows.append((unit, float(logps[k]), float(logps[n + k])))
            table = torch.zeros((len(examples), 2), dtype=torch.float32)
            for part in all_gather_objects(rows, env):
                for unit, chosen, rejected in part:
                    table[unit, 0] = chosen
                    table[unit, 1] = rejected
            reference[split] = table
        if ref_uri:
            del forward, module
        self.reference = reference
        engine.train()

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

    def load_reference(self, path: Path) -> nn.Module:
        """A separate reference policy (``rlhf.dpo.referenceModel``)."""
        return self.load_base(path, torch.float32)
