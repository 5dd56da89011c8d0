"""Our DPO loss and log-probs equal TRL 1.16 DPOTrainer's on the same pairs, policy and
reference, on the batches our training loop builds for a DPO job: right-padded rows of
different lengths (DPO does not pack, see ``padding_free_batches``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune_trainer.data.batching import collate, padding_free_batches
from kubetune_trainer.data.encode import IGNORE, EncodedPair, Encoder
from kubetune_trainer.data.formats import parse_row
from tests.trainer.helpers import manifest

PAIRS = 6


def _dpo_job(tiny_model: Path, tmp_path: Path, loss_type: str) -> Any:
    from kubetune.api import FineTuneJob
    from kubetune.api.resolve import resolve

    doc = manifest(
        "dpo",
        tiny_model,
        tmp_path / "pref.jsonl",
        "preference",
        tmp_path / "out",
        rlhf={"dpo": {"beta": 1.0, "lossType": loss_type}},
    )
    return resolve(FineTuneJob.model_validate(doc), nodes=1, nproc_per_node=1)


def _trl_logps(trainer: Any, batch: dict[str, torch.Tensor]) -> tuple[float, float, float]:
    """TRL's loss and mean chosen/rejected log-probs of one collated batch."""
    with torch.no_grad():
        loss = float(trainer.compute_loss(trainer.model, batch))
    metrics = trainer._metrics["eval"]  # the models are in eval mode
    return loss, metrics["logps/chosen"][-1], metrics["logps/rejected"][-1]


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_dpo_loss_matches_trl_on_the_training_batches(
    loss_type: str, tiny_model: Path, tmp_path: Path
) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from kubetune_trainer.assets.sample_data import preference_rows
    from kubetune_trainer.methods.dpo import DpoMethod

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    policy = copy.deepcopy(reference)
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy away from the reference
        for param in policy.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    policy.eval()

    rows = preference_rows(PAIRS, seed=21, max_items=8)
    encoder = Encoder(tokenizer, max_seq_length=128)
    pairs = [encoder.encode(parse_row("preference", row, None)) for row in rows]
    assert all(isinstance(p, EncodedPair) for p in pairs)

    # the batch our loop builds for this job: padding-free or not as the trainer decides
    job = _dpo_job(tiny_model, tmp_path, loss_type)
    padding_free = padding_free_batches(job)
    assert padding_free is False  # DPO trains on padded rows (packing is refused for it)
    ours_batch = collate(
        pairs, padding_free=padding_free, pad_token_id=tokenizer.pad_token_id, dummy=pairs[0]
    )
    mask = ours_batch.inputs["attention_mask"]
    lengths = mask.sum(dim=1)
    assert int(lengths.min()) < mask.shape[1], "some rows are padded"
    assert len(set(lengths.tolist())) > 2, "rows of several lengths"

    def split(sample: Any) -> tuple[list[int], list[int]]:
        # prompt = the masked prefix (label[0] is always masked)
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
        per_device_train_batch_size=PAIRS,
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
    trl_loss, _, _ = _trl_logps(trainer, trainer.data_collator(examples))
    # per pair: TRL reports batch means, so one pair per batch gives each pair's values
    trl_pairs = [_trl_logps(trainer, trainer.data_collator([ex]))[1:] for ex in examples]

    settings = job.spec.rlhf.dpo
    method = DpoMethod.__new__(DpoMethod)
    method._keep_supported = None
    method.virtual_tokens = 0
    method.settings = settings
    with torch.no_grad():
        ref_logps, _ = method.sequence_logps(reference, reference, ours_batch)
        ours_batch.reference = torch.stack([ref_logps[:PAIRS], ref_logps[PAIRS:]], dim=1)
        policy_logps, _ = method.sequence_logps(policy, policy, ours_batch)
        out = method.loss(policy, policy, ours_batch)
    ours = float(out.loss_sum) / out.count
    # float32 noise only: different padding widths, fused vs plain log-softmax
    assert ours == pytest.approx(trl_loss, rel=1e-4, abs=1e-5)
    expected = torch.tensor(trl_pairs)  # [pairs, (chosen, rejected)]
    actual = torch.stack([policy_logps[:PAIRS], policy_logps[PAIRS:]], dim=1)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    assert abs(trl_loss - 0.6931) > 1e-3 or loss_type != "sigmoid"  # the policy really differs
