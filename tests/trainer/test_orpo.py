"""ORPO: our loss equals TRL 1.16's (trl.experimental.orpo) on the same pairs, and a run learns."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kubetune_trainer.data.batching import collate
from kubetune_trainer.data.encode import EncodedPair, Encoder
from kubetune_trainer.data.formats import parse_row
from tests.trainer.helpers import manifest, train_in_process, train_log


@pytest.mark.parametrize("beta", [0.1, 2.0])
def test_orpo_loss_matches_trl(beta: float, tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.orpo import ORPOTrainer

    from kubetune.api.rlhf import OrpoSettings
    from kubetune_trainer.assets.sample_data import preference_rows
    from kubetune_trainer.methods.orpo import OrpoMethod

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    policy = copy.deepcopy(AutoModelForCausalLM.from_pretrained(tiny_model)).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(torch.randn_like(param) * 0.1)

    encoder = Encoder(tokenizer, max_seq_length=128)
    rows = preference_rows(4, seed=21, max_items=5)
    pairs = [encoder.encode(parse_row("preference", row, None)) for row in rows]
    assert all(isinstance(p, EncodedPair) for p in pairs)
    pad = tokenizer.pad_token_id

    # TRL's side: a padded batch of [chosen..., rejected...], its own log-prob and loss code
    padded = collate(pairs, padding_free=False, pad_token_id=pad, dummy=pairs[0])
    with torch.no_grad():
        logits = policy(**padded.inputs).logits
    labels = padded.labels
    mean_logps = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    n = len(pairs)
    trl_self = SimpleNamespace(beta=beta, accelerator=SimpleNamespace(device=logits.device))
    losses, *_ = ORPOTrainer.odds_ratio_loss(trl_self, mean_logps[:n], mean_logps[n:])
    # the NLL term of ORPOTrainer.concatenated_forward, on the completion tokens
    nll = nn.CrossEntropyLoss()(
        logits[:n, :-1].reshape(-1, logits.shape[-1]), labels[:n, 1:].reshape(-1)
    )
    trl_loss = float(nll - losses.mean())

    method = OrpoMethod.__new__(OrpoMethod)
    method._keep_supported = None
    method.virtual_tokens = 0
    method.settings = OrpoSettings(beta=beta)
    packed = collate(pairs, padding_free=True, pad_token_id=pad, dummy=pairs[0])
    with torch.no_grad():
        out = method.loss(policy, policy, packed)
    assert out.count == 4.0
    assert float(out.loss_sum) / out.count == pytest.approx(trl_loss, rel=1e-4, abs=1e-5)
    assert out.metrics["nll"] / out.count == pytest.approx(float(nll), rel=1e-4)
    assert abs(float(losses.mean())) > 1e-3  # the odds-ratio term really contributes

    dummy = collate([], padding_free=True, pad_token_id=pad, dummy=pairs[0])
    empty = method.loss(policy, policy, dummy)  # a zero-weight micro-batch stays finite
    assert empty.count == 0.0 and float(empty.loss_sum.detach()) == 0.0


def test_orpo_run_lowers_the_loss(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    doc = manifest(
        "orpo",
        tiny_model,
        data_dir / "pref.jsonl",
        "preference",
        out,
        eval_data=data_dir / "pref_eval.jsonl",
        hyper={"maxSteps": 8, "globalBatchSize": 8, "microBatchSize": 4, "learningRate": 2e-3},
        rlhf={"orpo": {"beta": 0.5}},
    )
    result = train_in_process(doc, tmp_path)
    base, tuned = result.eval_results["base"], result.eval_results["tuned"]
    assert tuned["loss"] < base["loss"] - 0.05
    assert tuned["chosen_nll_per_token"] < base["chosen_nll_per_token"]
    assert tuned["perplexity"] == pytest.approx(math.exp(tuned["chosen_nll_per_token"]))
    losses = [row["loss"] for row in train_log(out)]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
