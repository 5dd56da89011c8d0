"""Greedy, seeded generation and reward-model scoring on rank 0 (one prompt at a time:
no padding, so a response never depends on which other prompts share its batch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def generate(
    model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int, seed: int
) -> list[str]:
    """One greedy response per prompt, decoded without special tokens."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    responses: list[str] = []
    try:
        with torch.no_grad():
            for prompt in prompts:
                enc = tokenizer(prompt, return_tensors="pt").to(device)
                out = model.generate(
                    input_ids=enc["input_ids"],
                    attention_mask=enc["attention_mask"],
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                    use_cache=True,
                )
                new = out[0, enc["input_ids"].shape[1] :]
                responses.append(tokenizer.decode(new, skip_special_tokens=True))
    finally:
        if was_training:
            model.train()
    return responses


def reward_scores(
    model: Any, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str]
) -> list[float]:
    """The reward model's scalar score of each prompt + response."""
    device = next(model.parameters()).device
    model.eval()
    scores: list[float] = []
    with torch.no_grad():
        for prompt, response in zip(prompts, responses, strict=True):
            enc = tokenizer(prompt + response, return_tensors="pt", truncation=True).to(device)
            logits = model(**enc).logits
            scores.append(float(logits.reshape(-1)[0]))
    return scores
