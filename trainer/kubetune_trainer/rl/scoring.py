"""What pays the policy: a reward model's score or a verifiable check of the answer.

Both score a :class:`~kubetune_trainer.rl.rollout.Rollout` row by row. A reward model is a
sequence classifier (the output of a ``reward`` job) that reads prompt + response; its
score is taken at the last attended token of each row, found from our own mask rather
than from ``pad_token_id`` (tokenizers whose pad is their EOS would otherwise pool the
token before the EOS the policy was paid to write). A check runs fixed code on the
decoded text; no user code runs in the trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from kubetune.api.rlhf import RewardSpec, VerifiableReward
from kubetune_trainer.rl.rewards import (
    ExactMatch,
    NumericAnswer,
    RegexMatch,
    ValidJson,
)
from kubetune_trainer.rl.rewards import (
    VerifiableReward as Check,
)
from kubetune_trainer.rl.rollout import Rollout


class Scorer(Protocol):
    """Scores (B,) float32 of a rollout's rows; ``answers`` are the rows' references."""

    def score(
        self, rollout: Rollout, responses: list[str], answers: list[str | None]
    ) -> torch.Tensor: ...


def build_check(spec: VerifiableReward) -> Check:
    """The API's declared check as one of the fixed implementations."""
    if spec.check == "exactMatch":
        return ExactMatch()
    if spec.check == "regex":
        assert spec.pattern is not None  # CEL rule
        return RegexMatch(spec.pattern, full_match=spec.full_match)
    if spec.check == "validJson":
        return ValidJson(tuple(spec.required_keys))
    return NumericAnswer(spec.tolerance, spec.relative)


class CheckScorer:
    """A verifiable reward: 1.0 when the check passes, else 0.0."""

    def __init__(self, check: Check) -> None:
        self.check = check

    def score(
        self, rollout: Rollout, responses: list[str], answers: list[str | None]
    ) -> torch.Tensor:
        values = [
            self.check.score(text, answer) for text, answer in zip(responses, answers, strict=True)
        ]
        return torch.tensor(values, dtype=torch.float32, device=rollout.response_ids.device)


def last_token_scores(
    classifier: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The classifier's scalar head on each row's last attended token, (B,) float32.

    Runs the backbone and the ``score`` head of a transformers ``*ForSequenceClassification``
    directly so pooling follows ``attention_mask`` (left-padded prompts, right-padded
    responses), with position ids that count attended tokens only.
    """
    backbone: Any = getattr(classifier, "base_model", classifier)
    head: Any = classifier.score
    positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False
    ).last_hidden_state
    width = attention_mask.shape[1]
    last = width - 1 - attention_mask.flip(dims=[1]).argmax(dim=1)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return head(hidden[rows, last]).squeeze(-1).float()


def token_values(classifier: Any, rollout: Rollout) -> torch.Tensor:
    """Per-token values (B, R) of the response tokens from a value model (a classifier
    backbone with a scalar head on every position); 0 off the response mask.

    The value at response position t is read from the hidden state that predicts token t
    (the one before it), as OpenRLHF's critic does.
    """
    input_ids = torch.cat([rollout.prompt_ids, rollout.response_ids], dim=1)
    mask = torch.cat([rollout.prompt_mask, rollout.response_mask], dim=1).long()
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    backbone: Any = getattr(classifier, "base_model", classifier)
    hidden = backbone(
        input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False
    ).last_hidden_state
    width = rollout.response_ids.shape[1]
    values = classifier.score(hidden[:, -width - 1 : -1]).squeeze(-1).float()
    return torch.where(rollout.response_mask.bool(), values, 0.0)


class ModelScorer:
    """A frozen reward model (sequence classifier) scoring prompt + response."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()
        for param in self.model.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def score(
        self, rollout: Rollout, responses: list[str], answers: list[str | None]
    ) -> torch.Tensor:
        input_ids = torch.cat([rollout.prompt_ids, rollout.response_ids], dim=1)
        mask = torch.cat([rollout.prompt_mask, rollout.response_mask], dim=1).long()
        return last_token_scores(self.model, input_ids, mask)


def load_classifier(path: Path, dtype: torch.dtype, pad_token_id: int) -> nn.Module:
    """A sequence classifier with one label (reward or value model) from ``path``."""
    from kubetune_trainer.models.load import load_sequence_classifier

    return load_sequence_classifier(path, dtype=dtype, pad_token_id=pad_token_id)


def build_scorer(
    spec: RewardSpec, dtype: torch.dtype, pad_token_id: int, device: torch.device
) -> Scorer:
    """The job's reward: a loaded reward model, or its verifiable check."""
    if spec.verifiable is not None:
        return CheckScorer(build_check(spec.verifiable))
    assert spec.model is not None  # CEL: exactly one of model and verifiable
    from kubetune_trainer.models.load import resolve_model_dir

    path = resolve_model_dir(spec.model, what="reward model")
    return ModelScorer(load_classifier(path, dtype, pad_token_id).to(device))
