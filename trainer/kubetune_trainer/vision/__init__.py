"""Vision-language fine-tuning: chat-with-images data, the processor, freezing and LoRA
targets of a VLM (``spec.vision``, dataset format visionChat; see docs/vision.md)."""

from __future__ import annotations

from kubetune.api.resolve import ResolvedJob
from kubetune.api.vision import VISION_FORMAT, VisionSettings


def is_vision_job(job: ResolvedJob) -> bool:
    """The job trains a vision-language model (its data is chat with images)."""
    return job.spec.dataset.format == VISION_FORMAT


def vision_settings(job: ResolvedJob) -> VisionSettings:
    """``spec.vision``, or its defaults when a visionChat job leaves it out."""
    return job.spec.vision or VisionSettings()
