"""kubetune_varlen: host-side sample boundaries, FlexAttention == per-sample SDPA."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_mask

from kubetune_trainer.data.batching import collate
from kubetune_trainer.data.encode import IGNORE, Encoded, EncodedSample
from kubetune_trainer.models import varlen_attention as va

SIZES = (5, 17, 1, 40, 9)  # incl. a one-token sample; T = 72 is not a multiple of 128


def _qkv(heads: int, kv_heads: int, grad: bool) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    t = sum(SIZES)
    shapes = ((1, heads, t, 8), (1, kv_heads, t, 8), (1, kv_heads, t, 8))
    return tuple(torch.randn(s, generator=g).requires_grad_(grad) for s in shapes)


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (4, 2), (6, 1)])
def test_flex_forward_equals_per_sample_sdpa(heads: int, kv_heads: int) -> None:
    layout = va.PackedLayout(SIZES)
    q, k, v = _qkv(heads, kv_heads, grad=False)
    flex = va.flex_varlen(q, k, v, layout, scale=0.3)  # eager flex on CPU
    ref = va.per_sample_sdpa(q, k, v, layout, scale=0.3)
    assert flex.shape == (1, sum(SIZES), heads, 8)
    torch.testing.assert_close(flex, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (4, 2)])
def test_document_causal_mask_gives_per_sample_outputs_and_gradients(
    heads: int, kv_heads: int
) -> None:
    """FlexAttention has no CPU backward: check its mask_mod as a dense SDPA mask instead."""
    layout = va.PackedLayout(SIZES)
    t = layout.total
    mask_mod = va.document_causal_mask_mod(layout.document_ids())
    dense = create_mask(mask_mod, 1, 1, t, t, device="cpu")
    assert int(dense.sum()) == sum(n * (n + 1) // 2 for n in SIZES)  # block-diagonal causal
    results = []
    for masked in (True, False):
        q, k, v = _qkv(heads, kv_heads, grad=True)
        if masked:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=dense, enable_gqa=heads != kv_heads
            ).transpose(1, 2)
        else:
            out = va.per_sample_sdpa(q, k, v, layout)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), q.grad, k.grad, v.grad))
    for masked, per_sample in zip(*results, strict=True):
        torch.testing.assert_close(masked, per_sample, rtol=1e-5, atol=1e-5)


def test_block_mask_is_cached_per_layout_and_device() -> None:
    layout = va.PackedLayout(SIZES)
    first = layout.block_mask(torch.device("cpu"))
    assert layout.block_mask(torch.device("cpu")) is first
    assert first.shape[-2:] == (sum(SIZES), sum(SIZES))


def test_layout_rejects_empty_rows_and_mismatched_rows() -> None:
    with pytest.raises(ValueError, match="at least one token"):
        va.PackedLayout([])
    q, k, v = _qkv(2, 2, grad=False)
    module = torch.nn.Module()
    with pytest.raises(ValueError, match="covers 3 tokens"):
        va.varlen_attention_forward(module, q, k, v, None, packed_layout=va.PackedLayout([3]))


def _model(layers: int) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig

    va.register_varlen_attention()
    config = LlamaConfig(  # type: ignore[call-arg]  # attn_implementation: a config kwarg
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation=va.VARLEN_ATTENTION,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def _samples() -> list[Encoded]:
    g = torch.Generator().manual_seed(1)
    out: list[Encoded] = []
    for n in SIZES:
        ids = torch.randint(0, 97, (n,), generator=g).tolist()
        out.append(EncodedSample(ids, [IGNORE, *ids[1:]]))
    return out


class _HostConversions:
    """Counts Tensor.tolist / Tensor.item calls while installed (device syncs on a GPU)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        for name in ("tolist", "item"):
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, original))

    def _counting(self, name: str, original: Any) -> Any:
        def wrapper(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return original(tensor, *args, **kwargs)

        return wrapper


@pytest.fixture
def packed_batch() -> Iterator[Any]:
    samples = _samples()
    yield collate(samples, padding_free=True, pad_token_id=0, dummy=samples[0])


def test_no_host_conversion_in_any_layer(
    monkeypatch: pytest.MonkeyPatch, packed_batch: Any
) -> None:
    """A 6-layer forward + backward converts no tensor to Python (old code: one per layer)."""
    model = _model(layers=6).train()
    counter = _HostConversions(monkeypatch)
    out = model(**packed_batch.inputs, use_cache=False)
    out.logits.float().square().mean().backward()
    assert counter.calls == []


def test_flex_path_through_the_model_builds_one_mask_per_batch(
    monkeypatch: pytest.MonkeyPatch, packed_batch: Any
) -> None:
    """Forced onto FlexAttention (as on a GPU): same logits, one BlockMask for all layers."""
    model = _model(layers=4).eval()
    with torch.no_grad():
        per_sample = model(**packed_batch.inputs, use_cache=False).logits
    built: list[torch.device] = []
    original = va.document_causal_block_mask

    def counting(layout: va.PackedLayout, device: torch.device) -> Any:
        built.append(device)
        return original(layout, device)

    monkeypatch.setattr(va, "prefers_flex", lambda device: True)
    monkeypatch.setattr(va, "document_causal_block_mask", counting)
    with torch.no_grad():
        flex = model(**packed_batch.inputs, use_cache=False).logits
        again = model(**packed_batch.inputs, use_cache=False).logits  # same batch: cached
    assert built == [torch.device("cpu")]
    torch.testing.assert_close(flex, per_sample, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, flex)


def test_host_boundaries_from_another_collator_are_used(packed_batch: Any) -> None:
    """TRL's padding-free collator passes only ``cu_seq_lens_q`` (CPU): same logits."""
    model = _model(layers=2).eval()
    inputs = {k: v for k, v in packed_batch.inputs.items() if k != va.LAYOUT_KWARG}
    assert inputs["cu_seq_lens_q"].device.type == "cpu"
    with torch.no_grad():
        with_layout = model(**packed_batch.inputs, use_cache=False).logits
        from_boundaries = model(**inputs, use_cache=False).logits
    torch.testing.assert_close(from_boundaries, with_layout)


def test_device_boundaries_without_layout_are_refused() -> None:
    """Reading boundaries off a device in every layer would be a sync per layer: refused."""
    on_device = torch.tensor([0, 3, 7], dtype=torch.int32, device="meta")
    with pytest.raises(ValueError, match="packed_layout"):
        va.layout_from_boundaries(on_device)
    assert va.layout_from_boundaries(torch.tensor([0, 3, 7])).sizes == (3, 4)


def test_per_sample_sdpa_runs_lengths_rounded_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Samples reach SDPA padded to SAMPLE_MULTIPLE (CPU kernels are compiled per length);
    the outputs are those of the real rows (the masked reference above checks values)."""
    lengths: list[int] = []
    sdpa = F.scaled_dot_product_attention

    def recording(q: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
        lengths.append(q.shape[2])
        return sdpa(q, *a, **k)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    q, k, v = _qkv(4, 2, grad=False)
    out = va.per_sample_sdpa(q, k, v, va.PackedLayout(SIZES))
    assert out.shape == (1, sum(SIZES), 4, 8)
    assert lengths == [va.SAMPLE_MULTIPLE] * len(SIZES), (SIZES, lengths)
