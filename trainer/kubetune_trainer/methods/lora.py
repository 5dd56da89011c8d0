"""LoRA, DoRA and QLoRA through PEFT.

QLoRA loads the frozen base in 4-bit with bitsandbytes, which needs CUDA: on a CPU the
method stops with ExitCode.UNSUPPORTED before any data is touched (bitsandbytes is not
a CPU dependency of the trainer image). Merging folds ``B @ A * alpha/r`` into the base
weights; for QLoRA the base is reloaded unquantized (compute dtype) before merging, so
the merged model is a normal dense checkpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kubetune.api.training import LoraSettings
from kubetune_trainer.methods.base import Method, save_tokenizer
from kubetune_trainer.models.load import bitsandbytes_config, load_causal_lm
from kubetune_trainer.moe.lora_targets import moe_lora_dropout, moe_lora_targets
from kubetune_trainer.vision import is_vision_job, vision_settings
from kubetune_trainer.vision.model import vision_lora_config


def lora_config(
    settings: LoraSettings, task_type: str = "CAUSAL_LM", model: nn.Module | None = None
) -> Any:
    """PEFT's config; given the ``model``, MoE-aware targets (``kubetune_trainer.moe``)."""
    from peft import LoraConfig

    targets: Any = list(settings.target_modules)
    if targets == ["all-linear"]:
        targets = "all-linear"
    extra: dict[str, Any] = {}
    dropout = settings.dropout
    moe = moe_lora_targets(model, list(settings.target_modules)) if model is not None else None
    if moe is not None:  # expert tensors via target_parameters; routers left out
        targets = moe.target_modules
        extra = {"target_parameters": moe.target_parameters or None}
        dropout = moe_lora_dropout(moe, settings)
    return LoraConfig(
        task_type=task_type,
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=dropout,
        target_modules=targets,
        use_dora=settings.use_dora,
        bias="none",
        **extra,
    )


class PeftAdapterMethod(Method):
    """Shared save/reload/disable for methods implemented as PEFT adapters."""

    @contextlib.contextmanager
    def base_behaviour(self, model: nn.Module) -> Iterator[None]:
        peft_model = _peft_model(model)
        virtual, self.virtual_tokens = self.virtual_tokens, 0  # no virtual tokens in the base
        try:
            with peft_model.disable_adapter():
                yield
        finally:
            self.virtual_tokens = virtual

    def export_state_dict(
        self, model: nn.Module, full: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return full  # PeftModel.save_pretrained filters the adapter weights itself

    def save(
        self, model: nn.Module, state_dict: dict[str, torch.Tensor], out_dir: Path, tokenizer: Any
    ) -> None:
        peft_model = _peft_model(model)
        peft_model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
        save_tokenizer(tokenizer, out_dir)

    def load_trained(self, base_dir: Path, trained_dir: Path) -> nn.Module:
        from peft import PeftModel

        base = load_causal_lm(base_dir, dtype=torch.float32)
        return PeftModel.from_pretrained(base, trained_dir)


class LoraMethod(PeftAdapterMethod):
    name = "lora"

    def build(self, model_dir: Path, tokenizer: Any, load_dtype: torch.dtype) -> nn.Module:
        from peft import get_peft_model, prepare_model_for_kbit_training

        peft = self.job.spec.peft
        assert peft is not None and peft.lora is not None  # config.check_runnable
        quantization = None
        if "peft.quantization" in self.traits.blocks:  # qlora: a 4/8-bit base
            assert peft.quantization is not None
            quantization = bitsandbytes_config(peft.quantization)
        model = self.load_base(model_dir, load_dtype, quantization=quantization)
        if quantization is not None:
            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=self.job.spec.hyperparameters.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        config = lora_config(peft.lora, model=model)
        if is_vision_job(self.job):  # LoRA on the language model, not the vision tower
            config = vision_lora_config(model, peft.lora, vision_settings(self.job))
        return get_peft_model(model, config, autocast_adapter_dtype=True)

    def merge(self, base_dir: Path, trained_dir: Path, out_dir: Path, tokenizer: Any) -> None:
        """Fold the adapter into a dense copy of the base model and save it."""
        from peft import PeftModel

        dtype = torch.float32
        if self.job.spec.model.dtype in ("bfloat16", "float16"):
            dtype = getattr(torch, self.job.spec.model.dtype)
        base = load_causal_lm(
            base_dir,
            dtype=dtype,
            trust_remote_code=self.job.spec.model.trust_remote_code,
            attn_implementation="sdpa",
        )
        merged = PeftModel.from_pretrained(base, trained_dir).merge_and_unload()
        merged.save_pretrained(out_dir, safe_serialization=True)
        save_tokenizer(tokenizer, out_dir)


def _peft_model(model: nn.Module) -> Any:
    from peft import PeftModel

    current: Any = model
    for _ in range(4):
        if isinstance(current, PeftModel):
            return current
        current = getattr(current, "module", current)
    raise TypeError(f"{type(model).__name__} is not a PEFT model")
