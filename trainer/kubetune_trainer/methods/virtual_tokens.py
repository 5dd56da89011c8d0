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

from kubetune_trainer.errors import InvalidConfigError
from kubetune_trainer.methods.lora import PeftAdapterMethod
from kubetune_trainer.models.load import load_causal_lm


class PrefixTuning(PeftAdapterMethod):
    name = "prefix"
    supports_padding_free = False

    def build(self, model_dir: Path, tokenizer: Any, load_dtype: torch.dtype) -> nn.Module:
        from peft import PrefixTuningConfig, get_peft_model

        settings = self.cfg.prefix
        if settings is None:
            raise InvalidConfigError("method prefix needs spec.peft.prefix")
        model = load_causal_lm(
            model_dir,
            dtype=load_dtype,
            trust_remote_code=self.cfg.model.trust_remote_code,
            attn_implementation=self.attn_implementation,
        )
        config = PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=settings.num_virtual_tokens
        )
        return get_peft_model(model, config, autocast_adapter_dtype=True)


class PromptTuning(PeftAdapterMethod):
    name = "prompt"
    supports_padding_free = False

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        if cfg.prompt is None:
            raise InvalidConfigError("method prompt needs spec.peft.prompt")
        self.virtual_tokens = cfg.prompt.num_virtual_tokens

    def build(self, model_dir: Path, tokenizer: Any, load_dtype: torch.dtype) -> nn.Module:
        from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

        settings = self.cfg.prompt
        assert settings is not None
        model = load_causal_lm(
            model_dir,
            dtype=load_dtype,
            trust_remote_code=self.cfg.model.trust_remote_code,
            attn_implementation=self.attn_implementation,
        )
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
