"""KTO: our loss equals TRL 1.16 KTOTrainer's on the same batch, and a short run learns."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from kubetune_trainer.data.batching import collate
from kubetune_trainer.data.encode import EncodedUnpaired, Encoder, with_kl_completions
from kubetune_trainer.data.formats import parse_row
from tests.trainer.helpers import manifest, read_json, train_in_process, train_log


def _kl_gap(policy, reference, method, batch) -> float:  # type: ignore[no-untyped-def]
    """Mean log-ratio of the batch's KL sequences (what z0 is before the clamp)."""
    with torch.no_grad():
        pol = method.sequence_logps(policy, policy, batch.kl)
        ref = method.sequence_logps(reference, reference, batch.kl)
    return float((pol - ref).mean())


@pytest.mark.parametrize("undesirable_weight", [1.0, 1.7])
def test_kto_loss_matches_trl(undesirable_weight: float, tiny_model: Path, tmp_path: Path) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    from kubetune.api.rlhf import KtoSettings
    from kubetune_trainer.assets.sample_data import unpaired_rows
    from kubetune_trainer.methods.kto import KtoMethod

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    policy = copy.deepcopy(reference)
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy away from the reference
        for param in policy.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    policy.eval()

    rows = unpaired_rows(4, seed=21, max_items=5)
    assert {row["label"] for row in rows} == {True, False}
    encoder = Encoder(tokenizer, max_seq_length=128)
    units = [encoder.encode(parse_row("unpaired", row, None)) for row in rows]
    assert all(isinstance(u, EncodedUnpaired) for u in units)
    # the whole split is one batch: our rotation over the split is TRL's within the batch
    examples = with_kl_completions([u for u in units if isinstance(u, EncodedUnpaired)], 128)

    method = KtoMethod.__new__(KtoMethod)
    method._keep_supported = None
    method.virtual_tokens = 0
    method.settings = KtoSettings(beta=0.5, undesirable_weight=undesirable_weight)
    batch = collate(
        list(examples), padding_free=True, pad_token_id=tokenizer.pad_token_id, dummy=examples[0]
    )
    if _kl_gap(policy, reference, method, batch) <= 0:  # z0 > 0: the KL term really counts
        policy, reference = reference, policy
    assert _kl_gap(policy, reference, method, batch) > 0.05

    trl_examples = [
        {
            "prompt_ids": e.sample.input_ids[: e.prompt_length],
            "completion_ids": e.sample.input_ids[e.prompt_length :],
            "label": e.desirable,
        }
        for e in examples
    ]
    for i, example in enumerate(trl_examples):  # TRL's add_kl_completion_ids
        example["KL_completion_ids"] = trl_examples[i - 1]["completion_ids"]
    args = KTOConfig(
        output_dir=str(tmp_path / "trl"),
        beta=0.5,
        desirable_weight=1.0,
        undesirable_weight=undesirable_weight,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        max_length=None,
        precompute_ref_log_probs=False,
    )
    trainer = KTOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, trainer.data_collator(trl_examples)))

    with torch.no_grad():
        ref = method.sequence_logps(reference, reference, batch)
        assert batch.kl is not None
        ref_kl = method.sequence_logps(reference, reference, batch.kl)
        batch.reference = torch.stack([ref, ref_kl], dim=1)
        out = method.loss(policy, policy, batch)
    ours = float(out.loss_sum) / out.count
    assert out.count == 4.0
    assert out.metrics["kl"] / out.count == pytest.approx(
        _kl_gap(policy, reference, method, batch), rel=1e-4
    )
    # float32 noise only: packed vs padded attention, fused vs plain log-softmax
    assert ours == pytest.approx(trl_loss, rel=1e-3, abs=1e-5)
    assert abs(trl_loss - 0.5 * (1 + undesirable_weight) / 2) > 1e-3  # not the loss at r = z0


def test_kto_run_lowers_the_loss_and_writes_outputs(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    from kubetune_trainer.assets.sample_data import unpaired_rows, write_jsonl

    train = write_jsonl(unpaired_rows(16, seed=7, max_items=5), tmp_path / "kto.jsonl")
    out = tmp_path / "out"
    doc = manifest(
        "kto",
        tiny_model,
        train,
        "unpaired",
        out,
        eval_data=train,
        hyper={"maxSteps": 10, "globalBatchSize": 8, "microBatchSize": 4, "learningRate": 2e-3},
        rlhf={"kto": {"beta": 0.5}},
        checkpoint={"intervalSteps": 5, "intervalSeconds": 3600},
    )
    result = train_in_process(doc, tmp_path)
    base, tuned = result.eval_results["base"], result.eval_results["tuned"]
    assert base["loss"] == pytest.approx(0.5, abs=1e-5)  # policy == reference: r = z0 = 0
    assert base["kl"] == pytest.approx(0.0, abs=1e-5)
    assert tuned["loss"] < base["loss"] - 0.02
    assert tuned["desirable_reward"] > tuned["undesirable_reward"]
    losses = [row["loss"] for row in train_log(out)]
    assert len(losses) == 10 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert (out / "model.safetensors").exists() and (out / "README.md").exists()
    reference = torch.load(
        out / "checkpoints" / "step-000000010" / "kto_reference_logps.pt", weights_only=True
    )
    assert reference["train"].shape == (16, 2) and bool(torch.isfinite(reference["train"]).all())
    assert read_json(out / "eval_results.json")["tuned"]["examples"] == 16.0


def test_kto_resume_restores_the_reference_and_matches_a_straight_run(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a restart the reference comes from the checkpoint, not the trained policy."""
    from kubetune_trainer.assets.sample_data import unpaired_rows, write_jsonl
    from kubetune_trainer.errors import PreemptedError

    train = write_jsonl(unpaired_rows(16, seed=8, max_items=5), tmp_path / "kto.jsonl")

    def run(name: str) -> list[float]:
        out = tmp_path / name / "out"
        doc = manifest(
            "kto",
            tiny_model,
            train,
            "unpaired",
            out,
            hyper={"maxSteps": 6, "globalBatchSize": 8, "microBatchSize": 4, "learningRate": 2e-3},
            rlhf={"kto": {"beta": 0.5}},
        )
        (tmp_path / name).mkdir(exist_ok=True)
        train_in_process(doc, tmp_path / name)
        return [row["loss"] for row in train_log(out)]

    straight = run("a")
    monkeypatch.setenv("KUBETUNE_STOP_AFTER_STEP", "3")
    with pytest.raises(PreemptedError):
        run("b")
    monkeypatch.delenv("KUBETUNE_STOP_AFTER_STEP")
    resumed = run("b")
    assert len(resumed) == 6
    assert resumed == pytest.approx(straight, abs=1e-6)
