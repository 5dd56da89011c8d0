"""Batched rollouts of a causal LM for PPO, GRPO and RLOO, and their per-token log-probs.

``generate_rollouts`` samples responses with ``model.generate`` (KV cache) and returns them
with the masks the losses need; ``sequence_logprobs`` is the one forward pass that scores
them, used for the old policy, the policy during the update and the reference. Layout:
prompts left-padded (B, P), responses right-padded (B, R), the ``num_return_sequences``
samples of one prompt on consecutive rows (as ``rl.advantages`` groups them).

Log-probabilities are those of ``softmax(logits / temperature)`` of a separate forward pass,
as TRL 0.11 ``PPOv2Trainer``/``RLOOTrainer`` (``logits /= temperature``) and OpenRLHF do,
not generate's scores: those come after the top-k/top-p warpers, so their distribution is
not the one the policy loss differentiates through, and the PPO ratio ``exp(new - old)``
must compare one and the same distribution. Top-k/top-p only shape which tokens are sampled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from kubetune_trainer.rl.losses import logprobs_from_logits


@dataclass(frozen=True)
class GenerationSettings:
    """How responses are sampled. ``num_return_sequences`` is the group size of GRPO/RLOO."""

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    num_return_sequences: int = 1

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            # RL needs samples and the log-probs divide by the temperature: greedy is not RL.
            raise ValueError(f"temperature must be > 0 for RL sampling, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1.0 = off), got {self.top_p}")
        if self.num_return_sequences < 1:
            raise ValueError(f"num_return_sequences must be >= 1, got {self.num_return_sequences}")


@dataclass
class Rollout:
    """One batch of sampled responses; B = number of prompts * num_return_sequences."""

    prompt_ids: torch.Tensor  # (B, P) left-padded with pad_token_id
    prompt_mask: torch.Tensor  # (B, P) 1 on prompt tokens
    response_ids: torch.Tensor  # (B, R) right-padded with pad_token_id after the first EOS
    response_mask: torch.Tensor  # (B, R) 1 on generated tokens up to and including EOS
    ended_with_eos: torch.Tensor  # (B,) bool; False = cut by max_new_tokens
    old_logprobs: torch.Tensor  # (B, R) policy log-probs at sampling time, 0 off the mask
    response_lengths: torch.Tensor  # (B,) number of response tokens (EOS included)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) inside; every submodule's own mode restored afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _special_ids(tokenizer: Any) -> tuple[int, int]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; rollouts stop at EOS")
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else eos), int(eos)


def _left_pad(
    prompts: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    if not prompts:
        raise ValueError("generate_rollouts needs at least one prompt")
    if any(len(p) == 0 for p in prompts):
        # The first response token is predicted from the last prompt token: there must be one.
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


def _cut_at_eos(
    response: torch.Tensor, eos_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep each row up to its first EOS; returns ids, mask, ended_with_eos, lengths."""
    width = response.shape[1]
    is_eos = response == eos_id
    ended = is_eos.any(dim=1)
    # argmax returns the first maximum: the first EOS. pad == eos is common, so only the
    # first EOS counts, never "the first pad".
    first_eos = is_eos.int().argmax(dim=1)
    lengths = torch.where(ended, first_eos + 1, width)
    positions = torch.arange(width, device=response.device)
    mask = positions.unsqueeze(0) < lengths.unsqueeze(1)
    ids = torch.where(mask, response, pad_id)
    keep = int(lengths.max())  # drop columns that are padding in every row
    return ids[:, :keep], mask[:, :keep].long(), ended, lengths


@contextlib.contextmanager
def _seeded(generator: torch.Generator | None, device: torch.device) -> Iterator[None]:
    """Global RNG seeded from ``generator`` inside, and restored afterwards.

    ``generate`` takes no ``torch.Generator`` (it calls ``torch.multinomial`` on the global
    RNG), so a seed drawn from ``generator`` seeds a forked global RNG: the same generator
    state gives the same samples, each call advances it, and the caller's RNG is untouched.
    """
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def generate_rollouts(
    model: nn.Module,
    tokenizer: Any,
    prompts: list[list[int]],
    settings: GenerationSettings,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Sample ``settings.num_return_sequences`` responses per prompt and score them.

    Prompt i occupies rows ``i*k .. i*k+k-1``. Generation stops at the tokenizer's EOS;
    anything after a row's first EOS becomes padding with mask 0. The model runs in eval
    mode (no dropout in sampling or in ``old_logprobs``) and gets its modes back afterwards.
    Without ``generator`` sampling uses (and advances) torch's global RNG.
    """
    pad_id, eos_id = _special_ids(tokenizer)
    device = _device_of(model)
    prompt_ids, prompt_mask = _left_pad(prompts, pad_id, device)
    k = settings.num_return_sequences
    prompt_ids = prompt_ids.repeat_interleave(k, dim=0)
    prompt_mask = prompt_mask.repeat_interleave(k, dim=0)
    with _eval_mode(model), _seeded(generator, device):
        output = cast(Any, model).generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            do_sample=True,
            use_cache=True,
            num_beams=1,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            # Neutral values set explicitly: a checkpoint's generation_config.json (e.g. a
            # repetition_penalty) would otherwise fill them in and change what is sampled.
            repetition_penalty=1.0,
            min_new_tokens=0,
            no_repeat_ngram_size=0,
            min_p=None,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
        )
    response = output[:, prompt_ids.shape[1] :]
    response_ids, response_mask, ended, lengths = _cut_at_eos(response, eos_id, pad_id)
    rollout = Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        ended_with_eos=ended,
        old_logprobs=torch.zeros(response_ids.shape, device=device),
        response_lengths=lengths,
    )
    with _eval_mode(model):
        rollout.old_logprobs = sequence_logprobs(model, rollout, settings.temperature)
    return rollout


def response_logits(model: Any, rollout: Rollout, temperature: float) -> torch.Tensor:
    """Logits (B, R, V) / temperature of the distributions that produced the responses.

    One forward pass over prompt + response; position ids count only attended tokens, so a
    left-padded row gets the positions it would have alone (as generate assigns them).
    ``model`` is a module or any callable with its signature (a DDP engine's forward).
    Keeps the autograd graph: wrap in ``torch.no_grad`` for old/reference log-probs.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    input_ids = torch.cat([rollout.prompt_ids, rollout.response_ids], dim=1)
    attention_mask = torch.cat([rollout.prompt_mask, rollout.response_mask], dim=1).long()
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    width = rollout.response_ids.shape[1]
    # logits_to_keep (as TRL's GRPOTrainer): the LM head runs on the R+1 last positions
    # only, not on the prompt, whose logits would be thrown away.
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        logits_to_keep=width + 1,
    ).logits
    return logits[:, :-1] / temperature  # position t predicts token t + 1


def masked_logprobs(logits: torch.Tensor, rollout: Rollout) -> torch.Tensor:
    """Log-probs (B, R) of the response tokens under ``logits``; 0 off the response mask."""
    logprobs = logprobs_from_logits(logits, rollout.response_ids)
    return torch.where(rollout.response_mask.bool(), logprobs, 0.0)


def sequence_logprobs(model: Any, rollout: Rollout, temperature: float) -> torch.Tensor:
    """Log-probs (B, R) of the response tokens under ``softmax(logits / temperature)``.

    Zero where ``response_mask`` is 0. Keeps the autograd graph: wrap in ``torch.no_grad``
    for old/reference log-probs, not for the policy update.
    """
    return masked_logprobs(response_logits(model, rollout, temperature), rollout)


def is_peft_model(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


@torch.no_grad()
def reference_logprobs(
    model: nn.Module,
    rollout: Rollout,
    temperature: float,
    reference_model: nn.Module | None = None,
) -> torch.Tensor:
    """Log-probs (B, R) of the rollout under the frozen reference policy, in eval mode.

    ``reference_model`` when given; otherwise a peft ``model`` with its adapters disabled,
    i.e. the frozen base weights it already holds, so LoRA needs no second copy in memory.
    A full fine-tuning policy has no frozen weights left, hence the ValueError. Pass the
    unwrapped model (not a DDP/DeepSpeed engine) so the peft check can see it.
    """
    if reference_model is not None:
        with _eval_mode(reference_model):
            return sequence_logprobs(reference_model, rollout, temperature)
    if is_peft_model(model):
        with _eval_mode(model), cast(Any, model).disable_adapter():
            return sequence_logprobs(model, rollout, temperature)
    raise ValueError(
        "reference_logprobs: a full fine-tuning policy needs a separate frozen reference "
        "model (pass reference_model); only a peft (LoRA) policy can serve as its own "
        "reference by disabling its adapters"
    )
