"""Tiny, locally built base models for tests, benchmarks and the local demo.

Nothing may be downloaded from a model hub, so the trainer's tests and the
``kubetune run --local`` demo build their own: a byte-level BPE tokenizer trained with
``tokenizers`` on a small corpus (with a ChatML chat template whose assistant turns are
wrapped in ``{% generation %}`` so ``return_assistant_tokens_mask`` works), and a
randomly initialised Llama- or Qwen2-style decoder saved as an ordinary Hugging Face
directory (config.json + model.safetensors + tokenizer files). Builds are
deterministic for a given seed and corpus.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

SPECIAL_TOKENS = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML with generation markers: the tokenizer itself tells us which tokens the
# assistant produced, so the loss mask never depends on string matching.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

Family = Literal["llama", "qwen2"]


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of a tiny decoder; the defaults train a few steps/s on 2 CPU cores."""

    family: Family = "llama"
    vocab_size: int = 1024
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    seed: int = 0


_WORDS = [
    "the",
    "a",
    "an",
    "model",
    "data",
    "train",
    "token",
    "loss",
    "step",
    "batch",
    "learning",
    "rate",
    "adapter",
    "layer",
    "weight",
    "gradient",
    "optimizer",
    "checkpoint",
    "cluster",
    "node",
    "pod",
    "job",
    "queue",
    "metric",
    "prometheus",
    "kubernetes",
    "user",
    "assistant",
    "system",
    "question",
    "answer",
    "hello",
    "world",
    "please",
    "thanks",
    "help",
    "support",
    "ticket",
    "billing",
    "outage",
    "account",
    "password",
    "reset",
    "invoice",
    "refund",
    "order",
    "ship",
    "deliver",
    "track",
    "status",
    "python",
    "function",
    "class",
    "return",
    "value",
    "list",
    "dict",
    "string",
    "number",
    "error",
    "exception",
    "file",
    "open",
    "read",
    "write",
    "close",
    "path",
    "directory",
    "test",
    "assert",
    "equal",
    "true",
    "false",
    "none",
    "yes",
    "no",
    "good",
    "bad",
    "fast",
    "slow",
    "small",
    "large",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
]


def default_corpus(lines: int = 400, seed: int = 0) -> list[str]:
    """A deterministic English-like corpus for training a tiny tokenizer."""
    import random

    rng = random.Random(seed)
    corpus = []
    for _ in range(lines):
        n = rng.randint(4, 18)
        words = [rng.choice(_WORDS) for _ in range(n)]
        corpus.append(" ".join(words).capitalize() + rng.choice([".", "?", "!"]))
    corpus.extend(["0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 + - * / = ( ) [ ] { } : ,"] * 5)
    return corpus


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 1024) -> Any:
    """Train a byte-level BPE tokenizer and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=["<|endoftext|>", "<|im_start|>"],
        model_max_length=1_000_000,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    wrapped.padding_side = "right"
    return wrapped


def decoder_config(spec: TinyModelSpec, tokenizer: Any) -> Any:
    common: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "max_position_embeddings": spec.max_position_embeddings,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "initializer_range": 0.02,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": None,
        "use_cache": True,
    }
    if spec.family == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common)
    from transformers import Qwen2Config

    return Qwen2Config(**common)


def build_tiny_model(
    out_dir: Path,
    spec: TinyModelSpec | None = None,
    corpus: Sequence[str] | None = None,
) -> Path:
    """Build (deterministically) and save a tiny model + tokenizer to ``out_dir``.

    Written to a temporary sibling first and renamed, so a concurrent or interrupted
    build never leaves a half-written model that a later run would load.
    """
    import torch
    from transformers import AutoModelForCausalLM

    spec = spec or TinyModelSpec()
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(corpus if corpus is not None else default_corpus(), spec.vocab_size)
    config = decoder_config(spec, tokenizer)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return publish_tiny(out_dir, model, tokenizer, spec)


def publish_tiny(out_dir: Path, model: Any, preprocessor: Any, spec: Any) -> Path:
    """Save a built tiny model with its tokenizer or processor, all at once.

    The files go to a staging directory that is renamed into place, and
    ``kubetune_tiny.json`` (the spec dataclass) marks a complete build, so an interrupted
    build never leaves a half-written model that a later run would load.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        preprocessor.save_pretrained(staging)
        (staging / "kubetune_tiny.json").write_text(json.dumps(asdict(spec), indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def ensure_tiny_model(
    out_dir: Path, spec: TinyModelSpec | None = None, corpus: Sequence[str] | None = None
) -> Path:
    """Build the model once; reuse it when a complete build is already there."""
    if (Path(out_dir) / "kubetune_tiny.json").exists():
        return Path(out_dir)
    return build_tiny_model(out_dir, spec, corpus)
