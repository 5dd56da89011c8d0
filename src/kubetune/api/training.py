"""How to train: hyperparameters, PEFT settings, numerical health (RLHF: ``api.rlhf``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from kubetune.api.base import ApiModel, cel, validations

ModuleName = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class Hyperparameters(ApiModel):
    """Optimisation settings. Unset values get method-dependent defaults from practice."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "!(has(self.epochs) && has(self.maxSteps))",
                "set epochs or maxSteps, not both",
                field_path=".maxSteps",
            ),
            cel(
                "self.globalBatchSize >= self.microBatchSize",
                "globalBatchSize must be at least microBatchSize",
                field_path=".globalBatchSize",
            ),
        )
    }

    learning_rate: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="Peak learning rate. Default by method: 2e-5 for full fine-tuning "
        "(recommended 1e-5..5e-5), 2e-4 for LoRA/QLoRA, 1e-4 for adapters, 1e-2 for "
        "prefix and 3e-2 for prompt tuning, 1e-5 for reward models, 5e-7 for DPO. Values "
        "outside the recommended range are accepted with a warning.",
    )
    epochs: float | None = Field(
        default=None,
        gt=0.0,
        le=100.0,
        description="Passes over the training data (recommended 1..5). Default 3 (1 for DPO "
        "and reward models).",
    )
    max_steps: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Stop after this many optimizer steps instead of a number of epochs.",
    )
    global_batch_size: int = Field(
        default=64,
        ge=1,
        le=65536,
        description="Samples per optimizer step across all GPUs. Must be a multiple of "
        "microBatchSize x total GPUs; gradient accumulation is derived from it.",
    )
    micro_batch_size: int = Field(
        default=4, ge=1, le=1024, description="Samples per GPU per forward/backward pass."
    )
    weight_decay: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="AdamW weight decay (recommended 0.0..0.1). Default 0.01 for full "
        "fine-tuning, 0.0 for PEFT.",
    )
    warmup_ratio: float = Field(
        default=0.03, ge=0.0, le=0.5, description="Fraction of steps with linear warmup."
    )
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        default="cosine", description="Learning-rate schedule after warmup."
    )
    seed: int = Field(default=42, ge=0, le=2**31 - 1, description="Random seed.")
    gradient_checkpointing: bool = Field(
        default=False,
        description="Recompute activations in the backward pass: less memory, ~30% slower.",
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto",
        description="Mixed precision; auto is bf16 on GPUs that support it, fp32 on CPU.",
    )
    max_grad_norm: float = Field(
        default=1.0, gt=0.0, le=1000.0, description="Gradient clipping norm."
    )


class LoraSettings(ApiModel):
    """Low-rank adaptation (methods lora and qlora)."""

    r: int = Field(default=16, ge=1, le=1024, description="Rank of the update matrices.")
    alpha: int = Field(
        default=32, ge=1, le=4096, description="Scaling numerator (scale = alpha/r)."
    )
    dropout: float = Field(default=0.05, ge=0.0, le=0.9, description="Dropout on the LoRA path.")
    target_modules: list[ModuleName] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        max_length=64,
        description="Module names to adapt (e.g. q_proj, v_proj), or all-linear. On a "
        "mixture-of-experts base, experts names the expert projections (fused expert "
        "tensors included) and all-linear covers them too; the router is never adapted "
        "unless named.",
    )
    use_dora: bool = Field(
        default=False, description="Weight-decomposed LoRA (DoRA): better quality, slower."
    )


class QuantizationSettings(ApiModel):
    """Quantization of the frozen base model (method qlora; GPU only)."""

    bits: Literal[4, 8] = Field(default=4, description="Bits per base-model weight.")
    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type.")
    double_quant: bool = Field(default=True, description="Quantize the quantization constants.")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="Dtype of the matmuls."
    )


class VirtualTokenSettings(ApiModel):
    """Trainable virtual tokens (methods prefix and prompt)."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.init != 'text' || has(self.initText)",
                "init text requires initText",
                field_path=".initText",
            ),
        )
    }

    num_virtual_tokens: int = Field(
        default=20, ge=1, le=1024, description="Number of trainable virtual tokens."
    )
    init: Literal["random", "text"] = Field(
        default="random",
        description="Initialise from random vectors or from the embeddings of initText "
        "(prompt tuning only).",
    )
    init_text: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = Field(
        default=None, description="Text whose token embeddings initialise the prompt."
    )


class AdapterSettings(ApiModel):
    """Bottleneck adapter layers (method adapter), inserted in every decoder layer."""

    placement: Literal["pfeiffer", "houlsby"] = Field(
        default="pfeiffer",
        description="Where the adapters go: pfeiffer, one per layer after the MLP; houlsby, "
        "two per layer, after the attention and after the MLP (twice the parameters).",
    )
    bottleneck_size: int = Field(
        default=64, ge=1, le=8192, description="Hidden size of the adapter bottleneck."
    )
    non_linearity: Literal["relu", "gelu", "silu"] = Field(
        default="gelu", description="Activation between down- and up-projection."
    )
    scaling: float = Field(
        default=1.0, gt=0.0, le=100.0, description="Scale of the adapter output."
    )
    dropout: float = Field(default=0.0, ge=0.0, le=0.9, description="Dropout inside the adapter.")


class PeftSpec(ApiModel):
    """Settings of parameter-efficient methods; only the block of the chosen method applies."""

    lora: LoraSettings | None = Field(default=None, description="LoRA/QLoRA settings.")
    quantization: QuantizationSettings | None = Field(
        default=None, description="Base-model quantization for qlora."
    )
    prefix: VirtualTokenSettings | None = Field(default=None, description="Prefix-tuning settings.")
    prompt: VirtualTokenSettings | None = Field(default=None, description="Prompt-tuning settings.")
    adapter: AdapterSettings | None = Field(
        default=None, description="Bottleneck-adapter settings."
    )


class HealthSpec(ApiModel):
    """When training is numerically broken and must stop instead of burning GPU hours."""

    grad_norm_abort_threshold: float = Field(
        default=1.0e4,
        gt=0.0,
        le=1.0e12,
        description="Stop with a permanent failure when the gradient norm (before "
        "clipping) exceeds this. NaN/inf losses always stop the run.",
    )
    nan_tolerance_steps: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Consecutive non-finite losses tolerated before failing (fp16 "
        "loss-scale warm-up can produce a few).",
    )
