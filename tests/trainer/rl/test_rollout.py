"""Rollouts on the tiny local model, checked against per-row loops and hand-made tensors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from kubetune_trainer.rl.rollout import (
    GenerationSettings,
    Rollout,
    _cut_at_eos,
    generate_rollouts,
    reference_logprobs,
    sequence_logprobs,
)

# Prompts of different lengths, so batching left-pads them.
PROMPTS = [[5, 17, 42, 9, 100, 7], [8, 64], [300, 12, 13, 14]]


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture()
def model(tiny_model: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _naive_logprobs(model: Any, rollout: Rollout, temperature: float) -> torch.Tensor:
    """Each row alone, unpadded: log_softmax(logits / T) read at the response tokens."""
    out = torch.zeros(rollout.response_ids.shape)
    with torch.no_grad():
        for row in range(rollout.prompt_ids.shape[0]):
            prompt = rollout.prompt_ids[row][rollout.prompt_mask[row].bool()]
            length = int(rollout.response_lengths[row])
            response = rollout.response_ids[row, :length]
            ids = torch.cat([prompt, response]).unsqueeze(0)
            logits = model(input_ids=ids).logits[0].float()
            logp = torch.log_softmax(logits / temperature, dim=-1)
            for j in range(length):
                out[row, j] = logp[len(prompt) - 1 + j, response[j]]
    return out


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_new_tokens": 0},
        {"max_new_tokens": 4, "temperature": 0.0},
        {"max_new_tokens": 4, "top_k": -1},
        {"max_new_tokens": 4, "top_p": 0.0},
        {"max_new_tokens": 4, "top_p": 1.5},
        {"max_new_tokens": 4, "num_return_sequences": 0},
    ],
)
def test_settings_reject_invalid_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        GenerationSettings(**kwargs)


def test_cut_at_eos_by_hand() -> None:
    eos, pad = 3, 0
    response = torch.tensor(
        [
            [5, 3, 7, 3, 9],  # EOS at 1: keep 2 tokens, the later EOS is dropped too
            [5, 6, 7, 8, 9],  # no EOS: all 5 tokens kept
            [3, 1, 2, 3, 4],  # EOS first: a one-token response
        ]
    )
    ids, mask, ended, lengths = _cut_at_eos(response, eos, pad)
    assert ids.tolist() == [[5, 3, 0, 0, 0], [5, 6, 7, 8, 9], [3, 0, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert ended.tolist() == [True, False, True]
    assert lengths.tolist() == [2, 5, 1]


def test_cut_at_eos_with_pad_equal_to_eos_drops_all_padding_columns() -> None:
    # pad == eos (many chat models): only the first EOS ends a row; columns padding in
    # every row are dropped.
    ids, mask, ended, lengths = _cut_at_eos(torch.tensor([[4, 2, 2, 2], [2, 2, 2, 2]]), 2, 2)
    assert ids.tolist() == [[4, 2], [2, 2]]
    assert mask.tolist() == [[1, 1], [1, 0]]
    assert ended.tolist() == [True, True]
    assert lengths.tolist() == [2, 1]


def test_rollout_layout_masks_and_old_logprobs(model: Any, tokenizer: Any) -> None:
    model.train()
    model.model.layers[0].eval()  # a submodule's own mode must survive too
    settings = GenerationSettings(max_new_tokens=6, temperature=0.7, num_return_sequences=2)
    r = generate_rollouts(model, tokenizer, PROMPTS, settings, _gen(0))

    assert model.training and not model.model.layers[0].training
    assert model.model.layers[1].training
    k, pad = 2, tokenizer.pad_token_id
    assert r.prompt_ids.shape == (6, 6) and r.prompt_mask.shape == (6, 6)
    assert r.response_ids.shape[0] == 6 and r.response_ids.shape[1] <= 6
    for row in range(6):
        prompt = PROMPTS[row // k]  # groups are consecutive
        assert r.prompt_ids[row, 6 - len(prompt) :].tolist() == prompt
        assert r.prompt_ids[row, : 6 - len(prompt)].tolist() == [pad] * (6 - len(prompt))
        assert r.prompt_mask[row].tolist() == [0] * (6 - len(prompt)) + [1] * len(prompt)
        length = int(r.response_lengths[row])
        width = r.response_ids.shape[1]
        assert r.response_mask[row].tolist() == [1] * length + [0] * (width - length)
        assert r.response_ids[row, length:].tolist() == [pad] * (width - length)
        valid = r.response_ids[row, :length].tolist()
        eos_positions = [j for j, t in enumerate(valid) if t == tokenizer.eos_token_id]
        assert eos_positions == ([length - 1] if bool(r.ended_with_eos[row]) else [])
        if not r.ended_with_eos[row]:
            assert length == 6
    assert r.ended_with_eos.dtype == torch.bool
    torch.testing.assert_close(
        r.old_logprobs, _naive_logprobs(model.eval(), r, 0.7), atol=1e-5, rtol=0
    )
    assert bool((r.old_logprobs[r.response_mask.bool()] < 0).all())


def test_responses_cut_at_eos_with_a_model_biased_toward_eos(model: Any, tokenizer: Any) -> None:
    eos = tokenizer.eos_token_id
    head: Any = model.lm_head
    biased = nn.Linear(head.in_features, head.out_features, bias=True)
    biased.weight.data.copy_(head.weight.data)
    biased.bias.data.zero_()
    biased.bias.data[eos] = 6.0  # about half the mass on EOS at every step
    model.lm_head = biased
    settings = GenerationSettings(max_new_tokens=8, num_return_sequences=4)
    r = generate_rollouts(model, tokenizer, PROMPTS, settings, _gen(1))

    lengths = r.response_lengths.tolist()
    assert any(r.ended_with_eos.tolist()) and len(set(lengths)) > 1
    for row, length in enumerate(lengths):
        valid = r.response_ids[row, :length].tolist()
        if r.ended_with_eos[row]:
            assert valid[-1] == eos and eos not in valid[:-1]
        else:
            assert eos not in valid and length == 8
        assert int(r.response_mask[row].sum()) == length
    assert r.response_ids.shape[1] == max(lengths)
    torch.testing.assert_close(r.old_logprobs, _naive_logprobs(model, r, 1.0), atol=1e-5, rtol=0)


def test_top_k_1_batched_equals_one_prompt_at_a_time(model: Any, tokenizer: Any) -> None:
    settings = GenerationSettings(max_new_tokens=5, temperature=0.8, top_k=1)
    batched = generate_rollouts(model, tokenizer, PROMPTS, settings, _gen(2))
    for row, prompt in enumerate(PROMPTS):
        alone = generate_rollouts(model, tokenizer, [prompt], settings, _gen(3))
        length = int(alone.response_lengths[0])
        assert int(batched.response_lengths[row]) == length
        assert batched.response_ids[row, :length].tolist() == alone.response_ids[0].tolist()
        # Left padding must not change the log-probs either.
        torch.testing.assert_close(
            batched.old_logprobs[row, :length], alone.old_logprobs[0], atol=1e-5, rtol=0
        )


def test_groups_are_consecutive_and_sampling_is_reproducible(model: Any, tokenizer: Any) -> None:
    settings = GenerationSettings(max_new_tokens=6, num_return_sequences=3)
    rng_before = torch.get_rng_state()
    a = generate_rollouts(model, tokenizer, PROMPTS[:2], settings, _gen(4))
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is untouched
    b = generate_rollouts(model, tokenizer, PROMPTS[:2], settings, _gen(4))
    c = generate_rollouts(model, tokenizer, PROMPTS[:2], settings, _gen(5))

    assert torch.equal(a.response_ids, b.response_ids)
    assert not torch.equal(a.response_ids, c.response_ids)
    assert torch.equal(a.prompt_ids[0], a.prompt_ids[2]) and torch.equal(
        a.prompt_ids[3], a.prompt_ids[5]
    )
    assert not torch.equal(a.prompt_ids[2], a.prompt_ids[3])
    # Samples of one group differ from each other: the prompt was repeated, not the sample.
    group = {tuple(a.response_ids[i].tolist()) for i in range(3)}
    assert len(group) == 3


def test_sequence_logprobs_matches_naive_loop_and_keeps_grad(model: Any, tokenizer: Any) -> None:
    settings = GenerationSettings(max_new_tokens=6, temperature=1.3, num_return_sequences=2)
    r = generate_rollouts(model, tokenizer, PROMPTS, settings, _gen(6))
    for temperature in (1.3, 0.5):
        got = sequence_logprobs(model, r, temperature)
        torch.testing.assert_close(
            got.detach(), _naive_logprobs(model, r, temperature), atol=1e-5, rtol=0
        )
    assert got.requires_grad
    got.sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="temperature"):
        sequence_logprobs(model, r, 0.0)


def test_lora_reference_is_the_frozen_base(model: Any, tokenizer: Any) -> None:
    from peft import LoraConfig, get_peft_model

    base = copy.deepcopy(model)
    # init_lora_weights=False draws B nonzero, so the adapter changes the outputs.
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    policy = get_peft_model(model, config)
    policy.train()
    settings = GenerationSettings(max_new_tokens=6, temperature=0.9, num_return_sequences=2)
    r = generate_rollouts(policy, tokenizer, PROMPTS, settings, _gen(7))

    ref = reference_logprobs(policy, r, 0.9)
    with torch.no_grad():
        base_lp = sequence_logprobs(base, r, 0.9)
        policy_lp = sequence_logprobs(policy, r, 0.9)  # adapters back on after the reference
    torch.testing.assert_close(ref, base_lp, atol=1e-6, rtol=0)
    mask = r.response_mask.bool()
    assert (ref - policy_lp)[mask].abs().max() > 1e-3
    torch.testing.assert_close(policy_lp, r.old_logprobs, atol=1e-5, rtol=0)
    assert policy.training and not ref.requires_grad
    # An explicit reference model takes precedence over disabling the adapters.
    torch.testing.assert_close(
        reference_logprobs(policy, r, 0.9, reference_model=base), base_lp, atol=1e-6, rtol=0
    )


def test_full_model_reference_needs_a_separate_model(model: Any, tokenizer: Any) -> None:
    settings = GenerationSettings(max_new_tokens=3)
    r = generate_rollouts(model, tokenizer, PROMPTS[:1], settings, _gen(8))
    with pytest.raises(ValueError, match="separate frozen reference model"):
        reference_logprobs(model, r, 1.0)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.lm_head.weight.mul_(2.0)
    torch.testing.assert_close(
        reference_logprobs(model, r, 1.0, reference_model=other),
        _naive_logprobs(other, r, 1.0),
        atol=1e-5,
        rtol=0,
    )


def test_left_padding_positions_with_absolute_position_embeddings(tokenizer: Any) -> None:
    # RoPE is shift-invariant, so the Llama tests cannot see wrong position ids; GPT-2's
    # learned absolute positions can: a padded row must get positions 0.. from its first
    # real token, as it would alone.
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config).eval()  # eval: no dropout in the naive loop either
    with torch.no_grad():
        model.transformer.wpe.weight.normal_(0.0, 1.0)  # make positions matter
    settings = GenerationSettings(max_new_tokens=5, temperature=0.8, num_return_sequences=2)
    r = generate_rollouts(model, tokenizer, PROMPTS, settings, _gen(9))
    torch.testing.assert_close(r.old_logprobs, _naive_logprobs(model, r, 0.8), atol=1e-5, rtol=0)
