"""A tiny, locally built vision-language model (LLaVA layout) for tests, benchmarks, demos.

Same rules as ``models/tiny.py``: nothing is downloaded. A CLIP vision tower (32x32
images, 8x8 patches: 16 image tokens) feeds a two-layer projector into a tiny Llama;
the tokenizer is ``tiny.build_tokenizer`` plus an ``<image>`` token, and the chat
template renders the transformers content-part convention (``{"type": "image"}`` /
``{"type": "text", "text": ...}``) with ``{% generation %}`` markers around assistant
turns, so ``processor.apply_chat_template(..., return_assistant_tokens_mask=True)``
gives the loss mask. The directory is an ordinary Hugging Face one: config.json,
model.safetensors, tokenizer files and processor_config.json
(``AutoProcessor``/``AutoModelForImageTextToText`` load it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_TOKEN = "<image>"

# ChatML over content parts; the assistant's text is wrapped in generation markers.
VLM_CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'image' -%}{{ '<image>' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ render(message['content']) + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + render(message['content']) + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyVlmSpec:
    """Shape of the tiny VLM; the defaults train tens of steps per second on 2 CPU cores."""

    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    image_size: int = 32
    patch_size: int = 8
    vision_hidden_size: int = 32
    vision_layers: int = 2
    #: wider than the usual 0.02: with a frozen random LM head, LoRA could otherwise
    #: only move the logits a little (a pretrained head has large, structured weights)
    initializer_range: float = 0.1
    seed: int = 0


def build_vlm_processor(corpus: Sequence[str], spec: TinyVlmSpec) -> Any:
    """Tokenizer (with the image token) + CLIP image processor, as one LlavaProcessor."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    from kubetune_trainer.models.tiny import build_tokenizer

    tokenizer = build_tokenizer(corpus, spec.vocab_size)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.chat_template = VLM_CHAT_TEMPLATE
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by "default"
        image_token=IMAGE_TOKEN,
        chat_template=VLM_CHAT_TEMPLATE,
    )


def _config(spec: TinyVlmSpec, tokenizer: Any) -> Any:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        initializer_range=spec.initializer_range,
    )
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden_size,
        intermediate_size=spec.vision_hidden_size * 2,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=2,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden_size,
    )
    # initializer_range is read by _init_weights from the top-level config (PreTrainedConfig
    # kwargs, not a declared LlavaConfig field)
    extra: dict[str, Any] = {"initializer_range": spec.initializer_range}
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(spec.image_size // spec.patch_size) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
        **extra,
    )


def build_tiny_vlm(out_dir: Path, corpus: Sequence[str], spec: TinyVlmSpec | None = None) -> Path:
    """Build (deterministically) and save a tiny VLM + processor; staged, then renamed."""
    import torch
    from transformers import LlavaForConditionalGeneration

    spec = spec or TinyVlmSpec()
    out_dir = Path(out_dir)
    processor = build_vlm_processor(corpus, spec)
    tokenizer = processor.tokenizer
    torch.manual_seed(spec.seed)
    model = LlavaForConditionalGeneration(_config(spec, tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    from kubetune_trainer.models.tiny import publish_tiny

    return publish_tiny(out_dir, model, processor, spec)


def ensure_tiny_vlm(out_dir: Path, corpus: Sequence[str], spec: TinyVlmSpec | None = None) -> Path:
    """Build once; reuse a complete build."""
    if (Path(out_dir) / "kubetune_tiny.json").exists():
        return Path(out_dir)
    return build_tiny_vlm(out_dir, corpus, spec)
