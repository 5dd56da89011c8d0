"""Full fine-tuning: every weight trains; the output is a complete HF model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kubetune_trainer.methods.base import Method, save_whole_model
from kubetune_trainer.models.load import load_causal_lm


class FullFineTuning(Method):
    name = "full"

    def build(self, model_dir: Path, tokenizer: Any, load_dtype: torch.dtype) -> nn.Module:
        return self.load_base(model_dir, load_dtype)

    def save(
        self, model: nn.Module, state_dict: dict[str, torch.Tensor], out_dir: Path, tokenizer: Any
    ) -> None:
        save_whole_model(model, state_dict, out_dir, tokenizer)

    def load_trained(self, base_dir: Path, trained_dir: Path) -> nn.Module:
        return load_causal_lm(trained_dir, dtype=torch.float32)
