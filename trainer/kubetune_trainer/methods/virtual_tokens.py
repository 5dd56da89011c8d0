"""Prefix tuning and prompt tuning (PEFT): trainable virtual tokens, frozen model.

Prompt tuning prepends trainable embeddings to the input; prefix tuning prepends
trainable key/value vectors to every attention layer. Both change each sample's
sequence inside PEFT, so batches are padded (not padding-free); the logits of prompt
tuning are shifted by the number of virtual tokens, which the loss accounts for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kubetune.api.resolve import ResolvedJob
from kubetune_trainer.methods.lora import PeftAdapterMethod


class PrefixTuning(PeftAdapterMethod):
    name = "prefix"

    def build(self, model_dir: Path, tokenizer: Any, load_dtype: torch.dtype) -> nn.Module:
        from peft import PrefixTuningConfig, get_peft_model

        peft = self.job.spec.peft
        assert peft is not None and peft.prefix is not None  # config.check_runnable
        settings = peft.prefix
        model = self.load_base(model_dir, load_dtype)
        config = PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=settings.num_virtual_tokens
        )
        return get_peft_model(model, config, autocast_adapter_dtype=True)


class PromptTuning(PeftAdapterMethod):
    name = "prompt"

    def __init__(self, job: ResolvedJob) -> None:
        super().__init__(job)
        assert job.spec.peft is not None and job.spec.peft.prompt is not None
        self.settings = job.spec.peft.prompt  # config.check_runnable made sure
        self.virtual_tokens = self.settings.num_virtual_tokens

    def build(self, model_dir: Path, tokenizer: Any, load_dtype: torch.dtype) -> nn.Module:
        from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

        settings = self.settings
        model = self.load_base(model_dir, load_dtype)
        if settings.init == "text":
            config = PromptTuningConfig(
                task_type="CAUSAL_LM",
                num_virtual_tokens=settings.num_virtual_tokens,
                prompt_tuning_init=PromptTuningInit.TEXT,
                prompt_tuning_init_text=settings.init_text,
                tokenizer_name_or_path=str(model_dir),
            )
        else:
            config = PromptTuningConfig(
                task_type="CAUSAL_LM",
                num_virtual_tokens=settings.num_virtual_tokens,
                prompt_tuning_init=PromptTuningInit.RANDOM,
            )
        return get_peft_model(model, config, autocast_adapter_dtype=True)
