"""``spec.vision``: fine-tuning a vision-language model on chat with images.

A VLM is a vision tower (image encoder), a projector (image features to the language
model's embedding space) and a language model. The defaults follow common practice
(LLaVA's recipe): the pretrained vision tower stays frozen, the projector and the
language model (or LoRA on it) learn. Image resizing and normalisation are the model's
own processor's job (``processor_config.json`` next to the weights), so no image size
is set here.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import Field

from kubetune.api.base import ApiModel, cel

#: the dataset format of chat with images
VISION_FORMAT: Final = "visionChat"


class VisionSettings(ApiModel):
    """Which parts of a vision-language model train, and how many images a row may hold."""

    train_vision_tower: bool = Field(
        default=False,
        description="Train the vision tower (image encoder) too; with LoRA its linear layers "
        "get adapters. Default false: the pretrained encoder is frozen, which is cheaper and "
        "keeps its general features.",
    )
    train_projector: bool = Field(
        default=True,
        description="Train the projector that maps image features into the language model "
        "(fully, also with LoRA: it is small, and it is saved with the adapter).",
    )
    max_images_per_sample: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Most images one row may hold; rows with more are invalid (each image "
        "costs the model's image tokens of sequence length).",
    )


#: job-level CEL rules of the vision block (spliced into FineTuneJobSpec's rules)
VISION_RULES: list[dict[str, Any]] = [
    cel(
        f"!has(self.vision) || self.dataset.format == '{VISION_FORMAT}'",
        f"vision applies only to dataset.format {VISION_FORMAT}",
        field_path=".vision",
    ),
]
