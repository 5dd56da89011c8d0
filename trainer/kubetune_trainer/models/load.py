"""Find, check and load base models and tokenizers from local Hugging Face directories.

Loading is split from checking so the operator's CPU-only validation step can tell a
missing or corrupt model (ExitCode.MODEL_UNAVAILABLE) from a bad dataset without
materialising any weights: the config is parsed, the tokenizer loaded and every
safetensors header read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kubetune.api.sources import ModelSource
from kubetune_trainer.errors import ModelUnavailableError, UnsupportedError
from kubetune_trainer.uris import resolve_location

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelInfo:
    """What validation learned about a model directory."""

    path: Path
    model_type: str
    architectures: tuple[str, ...]
    num_parameters: int
    weight_files: tuple[Path, ...]


def resolve_model_dir(uri: str, revision: str | None = None, *, what: str = "model") -> Path:
    """The local directory of a model location, or ModelUnavailableError."""
    path = resolve_location(uri, ModelUnavailableError, what=what, revision=revision)
    if not path.is_dir():
        raise ModelUnavailableError(f"{what} {uri} ({path}) is not a directory")
    return path


def inspect_model_dir(path: Path, trust_remote_code: bool = False) -> ModelInfo:
    """Check a model directory without loading weights: config, tokenizer, safetensors."""
    from safetensors import safe_open
    from transformers import AutoConfig

    if not (path / "config.json").exists():
        raise ModelUnavailableError(f"{path} has no config.json: not a Hugging Face model")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelUnavailableError(f"{path}/config.json cannot be loaded: {exc}") from exc
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        if list(path.glob("*.bin")):
            raise ModelUnavailableError(
                f"{path} has only pickle (.bin) weights; kubetune loads safetensors only"
            )
        raise ModelUnavailableError(f"{path} has no *.safetensors weight files")
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            listed = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError) as exc:
            raise ModelUnavailableError(f"{index} is not a valid index: {exc}") from exc
        missing = sorted(name for name in listed if not (path / name).exists())
        if missing:
            raise ModelUnavailableError(f"{path} is missing weight shards: {missing}")
    total = 0
    for file in weights:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open is not a Mapping
                    shape = handle.get_slice(key).get_shape()
                    count = 1
                    for dim in shape:
                        count *= int(dim)
                    total += count
        except Exception as exc:
            raise ModelUnavailableError(
                f"{file} is not a readable safetensors file: {exc}"
            ) from exc
    load_tokenizer(path, trust_remote_code)
    return ModelInfo(
        path=path,
        model_type=str(getattr(config, "model_type", "unknown")),
        architectures=tuple(getattr(config, "architectures", None) or ()),
        num_parameters=total,
        weight_files=tuple(weights),
    )


def load_tokenizer(path: Path, trust_remote_code: bool = False) -> Any:
    """Load the tokenizer; pad with EOS when the model has no pad token; pad right."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelUnavailableError(f"the tokenizer in {path} cannot be loaded: {exc}") from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelUnavailableError(f"the tokenizer in {path} has neither pad nor eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_dtype(settings: ModelSource, precision: str, frozen_base: bool) -> torch.dtype:
    """Dtype of the loaded weights.

    Trainable weights stay float32 (the optimizer's master copy) and autocast supplies
    bf16/fp16 compute; a frozen PEFT base can live in the half dtype, which is most of
    PEFT's memory saving on weights. An explicit ``model.dtype`` wins.
    """
    if settings.dtype != "auto":
        return _DTYPES[settings.dtype]
    if frozen_base and precision in ("bf16", "fp16"):
        return torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.float32


def load_causal_lm(
    path: Path,
    *,
    dtype: torch.dtype,
    trust_remote_code: bool = False,
    quantization: Any = None,
    attn_implementation: str = "sdpa",
) -> Any:
    """Load a causal LM from a local directory (safetensors only); a vision-language
    model (config with a vision part) loads as one, for chat with images."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from kubetune_trainer.vision.model import is_vision_model_dir

    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "trust_remote_code": trust_remote_code,
        "use_safetensors": True,
        "attn_implementation": attn_implementation,
    }
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        auto = AutoModelForImageTextToText if is_vision_model_dir(path) else AutoModelForCausalLM
        model = auto.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"cannot load the model in {path}: {exc}") from exc
    model.config.use_cache = False
    return model


def load_sequence_classifier(
    path: Path, *, dtype: torch.dtype, pad_token_id: int, trust_remote_code: bool = False
) -> Any:
    """Load a decoder with a scalar score head (reward model); the head is new."""
    from transformers import AutoModelForSequenceClassification

    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=1,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            attn_implementation="sdpa",
        )
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"cannot load {path} as a reward model: {exc}") from exc
    model.config.pad_token_id = pad_token_id
    model.config.use_cache = False
    return model


def bitsandbytes_config(quant: Any) -> Any:
    """The 4/8-bit quantization config for QLoRA; UnsupportedError without CUDA/bnb."""
    if not torch.cuda.is_available():
        raise UnsupportedError(
            "method qlora needs a CUDA GPU (bitsandbytes 4-bit kernels); this process has "
            "none. Use method lora on CPU, or request GPUs (resources.gpusPerNode)."
        )
    try:
        import bitsandbytes  # type: ignore[import-not-found]  # noqa: F401
    except ImportError as exc:
        raise UnsupportedError(
            "method qlora needs the bitsandbytes package in the trainer image"
        ) from exc
    from transformers import BitsAndBytesConfig

    compute = _DTYPES[quant.compute_dtype]
    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=compute,
    )
