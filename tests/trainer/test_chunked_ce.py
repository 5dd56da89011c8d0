"""Chunked LM-head cross-entropy: same values and gradients as the full-logits loss,
and never more than ``chunk_size`` rows projected onto the vocabulary at once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kubetune_trainer.data.batching import Batch, collate
from kubetune_trainer.data.encode import IGNORE, Encoded, EncodedSample
from kubetune_trainer.methods import chunked_ce
from kubetune_trainer.methods.base import find_pretrained, token_logprobs
from kubetune_trainer.methods.chunked_ce import chunkable_head, chunked_target_logprobs

VOCAB = 997


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_values_and_gradients_equal_full_cross_entropy(bias: bool, chunk: int) -> None:
    torch.manual_seed(0)
    head = nn.Linear(24, VOCAB, bias=bias).double()
    hidden = torch.randn(53, 24, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, VOCAB, (53,))
    upstream = torch.randn(53, dtype=torch.float64)

    ours = chunked_target_logprobs(hidden, head, targets, chunk)
    (ours.double() * upstream).sum().backward()
    got = [
        torch.clone(g) for g in (hidden.grad, *(p.grad for p in head.parameters())) if g is not None
    ]
    hidden.grad = None
    head.zero_grad()
    full = -F.cross_entropy(head(hidden), targets, reduction="none")
    (full * upstream).sum().backward()
    want = [g for g in (hidden.grad, *(p.grad for p in head.parameters())) if g is not None]
    assert len(got) == len(want) == 2 + bias

    torch.testing.assert_close(ours.double(), full, rtol=1e-6, atol=1e-5)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def _model() -> Any:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).train()


def _batch(padding_free: bool) -> Batch:
    g = torch.Generator().manual_seed(1)
    samples: list[Encoded] = []
    for length, prompt in ((40, 3), (57, 5), (9, 1), (70, 12)):
        ids = torch.randint(0, VOCAB, (length,), generator=g).tolist()
        samples.append(EncodedSample(ids, [IGNORE] * prompt + ids[prompt:]))
    return collate(samples, padding_free=padding_free, pad_token_id=0, dummy=samples[0])


def _loss_and_grads(model: nn.Module, batch: Batch, head: nn.Linear | None) -> list[torch.Tensor]:
    model.zero_grad()
    loss = -token_logprobs(model, batch, head=head, chunk_size=16).logprobs.sum()
    loss.backward()
    return [loss.detach(), *(torch.clone(p.grad) for p in model.parameters() if p.grad is not None)]


@pytest.mark.parametrize("padding_free", [True, False])
def test_model_loss_and_gradients_match_unchunked(padding_free: bool) -> None:
    model = _model()
    head = chunkable_head(find_pretrained(model))
    assert head is model.lm_head
    batch = _batch(padding_free)
    chunked = _loss_and_grads(model, batch, head)
    plain = _loss_and_grads(model, batch, None)
    for c, p in zip(chunked, plain, strict=True):
        torch.testing.assert_close(c, p, rtol=1e-5, atol=1e-6)


@pytest.fixture
def projected_rows(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Rows of every projection onto the vocabulary: LM-head calls and the chunks' matmuls."""
    rows: list[int] = []
    original = chunked_ce._project

    def project(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        rows.append(h.shape[0])
        return original(h, w, b)

    monkeypatch.setattr(chunked_ce, "_project", project)
    handle = nn.modules.module.register_module_forward_hook(
        lambda module, args, out: (
            rows.append(out.reshape(-1, out.shape[-1]).shape[0])
            if isinstance(module, nn.Linear) and out.shape[-1] == VOCAB
            else None
        )
    )
    try:
        yield rows
    finally:
        handle.remove()


@pytest.mark.parametrize("chunked", [True, False])
def test_full_vocabulary_logits_are_never_materialised(
    chunked: bool, projected_rows: list[int]
) -> None:
    """With chunking no projection onto the vocabulary exceeds the chunk; without, one does."""
    model = _model()
    batch = _batch(padding_free=True)
    targets = int((batch.labels[:, 1:] != IGNORE).sum())
    assert targets > 16
    head = chunkable_head(find_pretrained(model)) if chunked else None
    loss = -token_logprobs(model, batch, head=head, chunk_size=16).logprobs.sum()
    loss.backward()
    largest = max(projected_rows)
    if chunked:
        assert largest <= 16, projected_rows
        # forward and the backward's recomputation, rows rounded up to ROW_MULTIPLE
        multiple = chunked_ce.ROW_MULTIPLE
        assert sum(projected_rows) == 2 * -(-targets // multiple) * multiple
    else:
        assert largest == targets


def test_models_with_transformed_logits_keep_the_plain_head() -> None:
    model = _model()
    model.config.final_logit_softcapping = 30.0  # Gemma-2's transform after the head
    assert chunkable_head(find_pretrained(model)) is None


def test_rows_are_rounded_up_to_a_few_shapes(projected_rows: list[int]) -> None:
    """53 targets are projected as 64 rows (CPU kernels are compiled per shape)."""
    head = nn.Linear(24, VOCAB)
    hidden = torch.randn(53, 24, requires_grad=True)
    out = chunked_target_logprobs(hidden, head, torch.randint(0, VOCAB, (53,)), 1024)
    out.sum().backward()
    assert out.shape == (53,)
    assert projected_rows == [64]  # one chunk: its softmax is kept for the backward
    assert hidden.grad is not None and hidden.grad.shape == (53, 24)
