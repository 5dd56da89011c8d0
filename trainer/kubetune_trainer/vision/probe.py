"""Greedy answers of a VLM to image questions: the held-out check of the colour task
(tests, benchmark) and a quick look at what a trained VLM says about an image."""

from __future__ import annotations

import io
from typing import Any

import torch

from kubetune_trainer.assets.vision_data import messages


def answer(model: Any, processor: Any, png: bytes, max_new_tokens: int = 4) -> str:
    """The model's greedy answer to the task's question about one image."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    inputs = processor.apply_chat_template(
        messages(image),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=processor.tokenizer.pad_token_id,
            eos_token_id=processor.tokenizer.eos_token_id,
        )
    new = out[0, inputs["input_ids"].shape[1] :]
    return str(processor.tokenizer.decode(new, skip_special_tokens=True)).strip()


def accuracy(model: Any, processor: Any, samples: list[tuple[str, bytes]]) -> float:
    """Fraction of (colour, png) samples whose answer names the colour exactly."""
    model.eval()
    hits = sum(answer(model, processor, png) == colour for colour, png in samples)
    return hits / max(len(samples), 1)
