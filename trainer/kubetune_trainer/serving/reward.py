"""Reward-model scores of sampled responses: the quality signal a rollout can test.

The reward model is a kubetune ``reward`` job's output (a sequence-classification model
with one label, scoring the last non-padding token, as the trainer trained it). It
scores the prompt followed by the response the client actually received, so a
degenerate answer is scored as what it is. Which responses are scored is drawn from a
seeded RNG at ``sample_rate``.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import torch

from kubetune_trainer.models.load import load_tokenizer


class RewardScorer:
    """Scores ``prompt + response`` with a reward model; one call at a time."""

    def __init__(self, model_dir: Path, trust_remote_code: bool = False) -> None:
        from transformers import AutoModelForSequenceClassification

        self.tokenizer = load_tokenizer(model_dir, trust_remote_code)
        self.model: Any = AutoModelForSequenceClassification.from_pretrained(
            model_dir, dtype=torch.float32, trust_remote_code=trust_remote_code
        )
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.eval()
        self.max_positions = int(getattr(self.model.config, "max_position_embeddings", 0) or 4096)

    def score(self, prompt: str, response: str) -> float:
        encoded = self.tokenizer(
            prompt + response,
            return_tensors="pt",
            truncation=True,
            max_length=self.max_positions,
        )
        with torch.inference_mode():
            logits = self.model(**encoded).logits
        return float(logits[0, 0])


class Sampler:
    """Seeded Bernoulli draws: which responses get scored."""

    def __init__(self, rate: float, seed: int = 0) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError("the reward sample rate must be between 0 and 1")
        self.rate = rate
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def draw(self) -> bool:
        if self.rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < self.rate
