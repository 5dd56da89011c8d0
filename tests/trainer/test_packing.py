"""Padding-free packing isolates samples: packed loss == loss of the samples run alone."""

from __future__ import annotations

import pytest
import torch

from kubetune_trainer.data.batching import collate
from kubetune_trainer.data.encode import IGNORE, EncodedSample
from kubetune_trainer.methods.base import token_logprobs


def _model(family: str, attn: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    cls = LlamaConfig if family == "llama" else Qwen2Config
    config = cls(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        attn_implementation=attn,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def _samples() -> list[EncodedSample]:
    g = torch.Generator().manual_seed(1)
    out = []
    for length, prompt in ((9, 3), (17, 5), (4, 1), (30, 12)):
        ids = torch.randint(0, 97, (length,), generator=g).tolist()
        labels = [IGNORE] * prompt + ids[prompt:]
        out.append(EncodedSample(ids, labels))
    return out


def _reference_loss(model: torch.nn.Module, samples: list[EncodedSample]) -> torch.Tensor:
    """Each sample alone through the stock HF loss (mean per sample x its target count)."""
    total = torch.zeros(())
    for s in samples:
        ids = torch.tensor([s.input_ids])
        labels = torch.tensor([s.labels])
        out = model(input_ids=ids, labels=labels, use_cache=False)
        total = total + out.loss * (labels[:, 1:] != IGNORE).sum()
    return total


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager", "kubetune_varlen"])
def test_packed_loss_equals_separate_samples(family: str, attn: str) -> None:
    if attn == "kubetune_varlen":
        from kubetune_trainer.models.varlen_attention import register_varlen_attention

        register_varlen_attention()
    model = _model(family, attn)
    samples = _samples()
    packed = collate(samples, padding_free=True, pad_token_id=0, dummy=samples[0])
    assert packed.inputs["input_ids"].shape[0] == 1  # one row, no padding at all
    assert packed.real_tokens == sum(len(s.input_ids) for s in samples)
    assert "attention_mask" not in packed.inputs
    packed_loss = -token_logprobs(model, packed).logprobs.sum()
    torch.testing.assert_close(packed_loss, _reference_loss(model, samples), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("attn", ["sdpa", "kubetune_varlen"])
def test_padded_and_packed_batches_agree_with_gradients(attn: str) -> None:
    from kubetune_trainer.models.varlen_attention import register_varlen_attention

    register_varlen_attention()
    model = _model("llama", attn).train()
    samples = _samples()
    grads = []
    losses = []
    for padding_free in (True, False):
        model.zero_grad()
        batch = collate(samples, padding_free=padding_free, pad_token_id=0, dummy=samples[0])
        loss = -token_logprobs(model, batch).logprobs.sum()
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "kubetune_varlen"])
def test_no_cross_sample_attention(attn: str) -> None:
    """Changing sample A never changes the logits of sample B packed after it."""
    from kubetune_trainer.models.varlen_attention import register_varlen_attention

    register_varlen_attention()
    model = _model("llama", attn)
    a, b = _samples()[:2]
    a2 = EncodedSample([(t + 1) % 97 for t in a.input_ids], a.labels)
    outs = []
    for first in (a, a2):
        batch = collate([first, b], padding_free=True, pad_token_id=0, dummy=first)
        with torch.no_grad():
            logits = model(**batch.inputs, use_cache=False).logits[0]
        outs.append(logits[len(first.input_ids) :])
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-5)
    # and the check is sensitive: without position restarts the second sample does change
    ids = [torch.tensor([s.input_ids + b.input_ids]) for s in (a, a2)]
    with torch.no_grad():
        plain = [model(input_ids=i, use_cache=False).logits[0, len(a.input_ids) :] for i in ids]
    # (stock transformers: without restarts or boundaries one causal sequence is assumed)
    assert not torch.allclose(plain[0], plain[1], atol=1e-4)


def test_varlen_model_equals_sdpa_on_padded_batches() -> None:
    """The same model with kubetune_varlen behaves like sdpa for padded input (incl. pads)."""
    from kubetune_trainer.models.varlen_attention import register_varlen_attention

    register_varlen_attention()
    samples = _samples()
    batch = collate(samples, padding_free=False, pad_token_id=0, dummy=samples[0])
    with torch.no_grad():
        ours = _model("llama", "kubetune_varlen")(**batch.inputs).logits
        stock = _model("llama", "sdpa")(**batch.inputs).logits
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5)


def test_packed_row_is_rounded_up_with_a_label_free_segment() -> None:
    """pad_to_multiple_of adds one isolated, label-free sample; the loss is unchanged."""
    from kubetune_trainer.models.varlen_attention import register_varlen_attention

    model = _model("llama", register_varlen_attention())
    samples = _samples()  # 60 tokens
    plain = collate(samples, padding_free=True, pad_token_id=0, dummy=samples[0])
    padded = collate(
        samples, padding_free=True, pad_token_id=0, dummy=samples[0], pad_to_multiple_of=64
    )
    assert padded.inputs["input_ids"].shape == (1, 64)
    assert padded.inputs["packed_layout"].sizes == (9, 17, 4, 30, 4)
    assert padded.labels[0, 60:].eq(IGNORE).all()
    assert padded.inputs["position_ids"][0, 60:].tolist() == [0, 1, 2, 3]
    assert (padded.num_sequences, padded.real_tokens) == (plain.num_sequences, 60)
    torch.testing.assert_close(
        token_logprobs(model, padded).logprobs, token_logprobs(model, plain).logprobs
    )


def test_the_trainer_rounds_packed_rows_up() -> None:
    from types import SimpleNamespace

    from kubetune_trainer.trainer import PACKED_ROW_MULTIPLE, Trainer

    samples = _samples()
    owner = SimpleNamespace(
        padding_free=True,
        pad_token_id=0,
        method=SimpleNamespace(attach=lambda batch, split: None),
        env=SimpleNamespace(device=torch.device("cpu")),
    )
    batch = Trainer.batch(owner, samples, [0, 1, 2], "train")  # type: ignore[arg-type]
    assert PACKED_ROW_MULTIPLE > 1
    assert batch.inputs["input_ids"].shape[1] % PACKED_ROW_MULTIPLE == 0
    assert batch.real_tokens == 30
