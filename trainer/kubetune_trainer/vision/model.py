"""Which parts of a vision-language model train, and the modality check of validation.

Parts are found by the names transformers gives them across its VLM families
(``vision_tower``/``visual``/``vision_model``; ``multi_modal_projector``/``merger``/
``connector``), so the rules hold for LLaVA-, Qwen-VL- and Idefics-style models alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from kubetune.api.resolve import ResolvedJob
from kubetune.api.training import LoraSettings
from kubetune.api.vision import VISION_FORMAT, VisionSettings
from kubetune_trainer.errors import InvalidConfigError
from kubetune_trainer.vision import is_vision_job

VISION_TOWER_NAMES = ("vision_tower", "visual", "vision_model", "image_encoder")
PROJECTOR_NAMES = ("multi_modal_projector", "merger", "connector", "mm_projector")


def _has_part(name: str, parts: tuple[str, ...]) -> bool:
    return any(part in parts for part in name.split("."))


def is_vision_model_dir(path: Path) -> bool:
    """The model directory holds a vision-language model (its config has a vision part)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "vision_config" in config


def check_modality(job: ResolvedJob, model_dir: Path) -> None:
    """Refuse images for a text-only model and text data for a VLM, before any training."""
    vlm = is_vision_model_dir(model_dir)
    fmt = job.spec.dataset.format
    if is_vision_job(job) and not vlm:
        raise InvalidConfigError(
            f"dataset.format {VISION_FORMAT} needs a vision-language model, but "
            f"{job.spec.model.uri} is text-only (its config.json has no vision_config)"
        )
    if vlm and not is_vision_job(job):
        raise InvalidConfigError(
            f"{job.spec.model.uri} is a vision-language model; train it with dataset.format "
            f"{VISION_FORMAT} (chat with images), not {fmt}"
        )


def model_dir_of(job: ResolvedJob) -> Path | None:
    """The job's local model directory, or None when it cannot be resolved (the model
    checks report that with their own exit code)."""
    from kubetune_trainer.errors import ModelUnavailableError
    from kubetune_trainer.models.load import resolve_model_dir

    try:
        return resolve_model_dir(job.spec.model.uri, job.spec.model.revision)
    except ModelUnavailableError:
        return None


def freeze_parts(model: nn.Module, settings: VisionSettings) -> dict[str, int]:
    """Freeze the vision tower and/or projector as ``settings`` say; counts per part."""
    counts = {"vision_tower": 0, "projector": 0}
    for name, param in model.named_parameters():
        if _has_part(name, VISION_TOWER_NAMES):
            param.requires_grad_(settings.train_vision_tower)
            counts["vision_tower"] += param.numel()
        elif _has_part(name, PROJECTOR_NAMES):
            param.requires_grad_(settings.train_projector)
            counts["projector"] += param.numel()
    return counts


def lora_targets(model: nn.Module, lora: LoraSettings, settings: VisionSettings) -> list[str]:
    """Full names of the linear layers that get LoRA: the language model's (``all-linear``
    or the named ones), the vision tower's too with ``trainVisionTower``; never the LM
    head nor the projector (trained fully instead, see ``projector_modules``)."""
    wanted = set(lora.target_modules)
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name.split(".")[-1] == "lm_head":
            continue
        if _has_part(name, PROJECTOR_NAMES):
            continue
        if _has_part(name, VISION_TOWER_NAMES) and not settings.train_vision_tower:
            continue
        if "all-linear" in wanted or name.split(".")[-1] in wanted:
            out.append(name)
    if not out:
        raise InvalidConfigError(
            f"peft.lora.targetModules {sorted(wanted)} match no linear layer of the model"
        )
    return out


def projector_modules(model: nn.Module, settings: VisionSettings) -> list[str]:
    """The projector module(s), trained fully and saved with the adapter (PEFT
    ``modules_to_save``) when ``trainProjector``."""
    if not settings.train_projector:
        return []
    return sorted(
        {
            name.split(".")[-1]
            for name, _ in model.named_modules()
            if name.split(".")[-1] in PROJECTOR_NAMES
        }
    )


def vision_lora_config(model: nn.Module, lora: LoraSettings, settings: VisionSettings) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        task_type="CAUSAL_LM",
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_targets(model, lora, settings),
        modules_to_save=projector_modules(model, settings) or None,
        use_dora=lora.use_dora,
        bias="none",
    )
