"""Tokenize chat-with-images rows with the model's own processor.

The processor expands each image part into the model's image tokens and turns the
images into ``pixel_values``; its chat template's ``{% generation %}`` markers give the
assistant-token mask, so the loss falls on the answer only (image tokens and the prompt
are masked like any prompt token). Image tokens must survive truncation whole: the
model pairs every image token with a feature, so a row whose images do not fit in
``maxSeqLength`` is invalid rather than cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kubetune.api.resolve import ResolvedJob
from kubetune_trainer.data.encode import Encoded, EncodedSample, Encoder
from kubetune_trainer.data.formats import Example, RowError, VisionChatExample
from kubetune_trainer.errors import InvalidConfigError, ModelUnavailableError
from kubetune_trainer.vision import vision_settings
from kubetune_trainer.vision.images import load_image


@dataclass(frozen=True)
class EncodedVisionSample(EncodedSample):
    """A training sequence with the pixel values of its images ([images, C, H, W])."""

    pixel_values: torch.Tensor | None = field(default=None, compare=False)


def load_processor(model_dir: Path, trust_remote_code: bool = False) -> Any:
    """The model's processor (tokenizer + image processor); pads right with EOS if needed."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelUnavailableError(
            f"the processor in {model_dir} cannot be loaded: {exc}"
        ) from exc
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or getattr(processor, "image_processor", None) is None:
        raise InvalidConfigError(
            f"{model_dir} has no image processor (processor_config.json / "
            "preprocessor_config.json): dataset.format visionChat needs a vision-language model"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return processor


class VisionEncoder(Encoder):
    """Encodes VisionChatExample rows into EncodedVisionSample."""

    def __init__(
        self, processor: Any, max_seq_length: int, completion_only_loss: bool, max_images: int
    ):
        super().__init__(processor.tokenizer, max_seq_length, completion_only_loss)
        self.processor = processor
        self.max_images = max_images
        self.image_token_id = getattr(processor, "image_token_id", None)

    def encode(self, example: Example) -> Encoded:
        if not isinstance(example, VisionChatExample):
            raise RowError(f"cannot encode {type(example).__name__} as visionChat")
        if len(example.images) > self.max_images:
            raise RowError(
                f"the row has {len(example.images)} images, more than "
                f"vision.maxImagesPerSample ({self.max_images})"
            )
        images = iter([load_image(ref, example.base_dir) for ref in example.images])
        messages = [
            {
                "role": m["role"],
                "content": m["content"]
                if isinstance(m["content"], str)
                else [
                    {"type": "image", "image": next(images)} if p["type"] == "image" else p
                    for p in m["content"]
                ],
            }
            for m in example.messages
        ]
        out = self.processor.apply_chat_template(
            messages,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            return_tensors="pt",
        )
        ids = out["input_ids"][0].tolist()
        mask = out["assistant_masks"][0].tolist()
        if len(ids) > self.max_seq_length and self.image_token_id in ids[self.max_seq_length :]:
            raise RowError(
                f"the row's image tokens do not fit in maxSeqLength {self.max_seq_length} "
                f"({len(ids)} tokens): raise it or use fewer images"
            )
        sample = self._sample(ids, mask)
        pixels = out.get("pixel_values") if example.images else None
        return EncodedVisionSample(sample.input_ids, sample.labels, sample.truncated, pixels)


def vision_encoder(job: ResolvedJob, model_dir: Path) -> VisionEncoder:
    data = job.spec.dataset
    processor = load_processor(model_dir, job.spec.model.trust_remote_code)
    return VisionEncoder(
        processor,
        data.max_seq_length,
        data.completion_only_loss,
        vision_settings(job).max_images_per_sample,
    )


def saved_processor(job: ResolvedJob, model_dir: Path) -> Any:
    """What the output holds next to the weights for a VLM (its processor: tokenizer,
    image processor, chat template), so the result reloads as it was trained; None for
    text jobs (their tokenizer is saved)."""
    from kubetune_trainer.vision import is_vision_job

    return (
        load_processor(model_dir, job.spec.model.trust_remote_code) if is_vision_job(job) else None
    )
