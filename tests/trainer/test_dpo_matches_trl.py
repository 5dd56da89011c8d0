"""Our DPO loss equals TRL 1.16 DPOTrainer's on the same pairs, policy and reference."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from kubetune_trainer.data.batching import collate
from kubetune_trainer.data.encode import IGNORE, EncodedPair, Encoder
from kubetune_trainer.data.formats import parse_row


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_dpo_loss_matches_trl(loss_type: str, tiny_model: Path, tmp_path: Path) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from kubetune_trainer.assets.sample_data import preference_rows

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    policy = copy.deepcopy(reference)
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy away from the reference
        for param in policy.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    policy.eval()

    rows = preference_rows(4, seed=21, max_items=5)
    encoder = Encoder(tokenizer, max_seq_length=128)
    pairs = [encoder.encode(parse_row("preference", row, None)) for row in rows]
    assert all(isinstance(p, EncodedPair) for p in pairs)

    def split(sample):  # prompt = the masked prefix (label[0] is always masked)
        k = next(i for i, label in enumerate(sample.labels) if label != IGNORE and i > 0)
        return sample.input_ids[:k], sample.input_ids[k:]

    examples = []
    for pair in pairs:
        prompt, chosen = split(pair.chosen)
        prompt_r, rejected = split(pair.rejected)
        assert prompt == prompt_r
        examples.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected})

    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        beta=1.0,
        loss_type=[loss_type],
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        max_length=None,
        precompute_ref_log_probs=False,
    )
    trainer = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    batch = trainer.data_collator(examples)
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, batch))

    from kubetune.api.rlhf import DpoSettings
    from kubetune_trainer.methods.dpo import DpoMethod

    method = DpoMethod.__new__(DpoMethod)
    method._keep_supported = None
    method.virtual_tokens = 0
    method.settings = DpoSettings(beta=1.0, loss_type=loss_type)
    ours_batch = collate(
        pairs, padding_free=True, pad_token_id=tokenizer.pad_token_id, dummy=pairs[0]
    )
    with torch.no_grad():
        ref_logps, _ = method.sequence_logps(reference, reference, ours_batch)
        n = len(pairs)
        ours_batch.reference = torch.stack([ref_logps[:n], ref_logps[n:]], dim=1)
        out = method.loss(policy, policy, ours_batch)
    ours = float(out.loss_sum) / out.count
    # float32 noise only: packed vs padded attention, fused vs plain log-softmax
    assert ours == pytest.approx(trl_loss, rel=1e-3, abs=1e-4)
    assert abs(trl_loss - 0.6931) > 1e-3 or loss_type != "sigmoid"  # the policy really differs
