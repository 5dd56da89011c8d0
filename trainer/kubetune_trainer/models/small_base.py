"""A small base model that has learned some English, built offline in a minute or two.

A randomly initialised model has nothing to adapt, so the local demo and the quality
benchmark start from a tiny Llama pre-trained briefly on text every Python install
ships: the docstrings of the standard library. The tokenizer is trained on those
docstrings plus the sample tasks' words (a real tokenizer covers everyday English), but
the model never sees a task before it is fine-tuned, so it cannot do them yet.
Deterministic for a given spec; cached by the caller (``kubetune_tiny.json`` marks a
complete build).
"""

from __future__ import annotations

import ast
import logging
import math
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune_trainer.models.tiny import (
    TinyModelSpec,
    build_tokenizer,
    decoder_config,
    publish_tiny,
)

log = logging.getLogger("kubetune.trainer")


@dataclass(frozen=True)
class SmallBaseSpec:
    """Shape and pre-training budget; the defaults build in a minute or two on 2 idle CPU
    cores (4.6 CPU-minutes measured on a loaded machine)."""

    model: TinyModelSpec = field(
        default_factory=lambda: TinyModelSpec(
            family="llama",
            vocab_size=2048,
            hidden_size=128,
            intermediate_size=384,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            seed=11,
        )
    )
    steps: int = 200
    batch_size: int = 16
    block_size: int = 128
    learning_rate: float = 3e-3
    corpus_chars: int = 1_500_000


def stdlib_docstrings(limit_chars: int = 1_500_000) -> list[str]:
    """Docstrings of the standard library, one paragraph each (offline English text)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    total = 0
    for file in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if "test" in file.parts or "idlelib" in file.parts:
            continue
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                continue
            doc = ast.get_docstring(node)
            for para in (doc or "").split("\n\n"):
                para = " ".join(para.split())
                if 40 <= len(para) <= 1200:
                    texts.append(para)
                    total += len(para)
        if total >= limit_chars:
            break
    return texts


def _blocks(tokenizer: Any, texts: list[str], block_size: int) -> Any:
    """The corpus as one token stream (paragraphs separated by EOS) cut into blocks."""
    import torch

    ids: list[int] = []
    for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids += [*encoded, tokenizer.eos_token_id]
    usable = len(ids) // block_size * block_size
    return torch.tensor(ids[:usable]).view(-1, block_size)


def pretrain(model: Any, blocks: Any, spec: SmallBaseSpec) -> float:
    """Causal-LM pre-training, cosine schedule with warm-up; returns the last loss."""
    import torch

    generator = torch.Generator().manual_seed(spec.model.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.01)
    warmup = max(1, spec.steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, spec.steps - warmup)))

    lr = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    loss = float("nan")
    for step in range(spec.steps):
        batch = blocks[torch.randint(len(blocks), (spec.batch_size,), generator=generator)]
        out = model(input_ids=batch, labels=batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr.step()
        optimizer.zero_grad(set_to_none=True)
        loss = float(out.loss.detach())
        if step % 50 == 0 or step == spec.steps - 1:
            log.info(
                "pre-training the small base: step %d/%d, loss %.3f", step + 1, spec.steps, loss
            )
    model.eval()
    return loss


def build_small_base(target: Path, spec: SmallBaseSpec | None = None) -> Path:
    """Build (tokenizer, random init, pre-training) and publish to ``target`` at once."""
    import torch
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.assets import sample_data as sd

    spec = spec or SmallBaseSpec()
    texts = stdlib_docstrings(spec.corpus_chars)
    task_words = sd.corpus_from_rows(sd.chat_rows(400, seed=7, max_items=12))
    tokenizer = build_tokenizer(texts[:20000] + task_words, spec.model.vocab_size)
    torch.manual_seed(spec.model.seed)
    model = AutoModelForCausalLM.from_config(
        decoder_config(spec.model, tokenizer), dtype=torch.float32
    )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    loss = pretrain(model, _blocks(tokenizer, texts, spec.block_size), spec)
    log.info("pre-trained the small base on %d docstring paragraphs: loss %.3f", len(texts), loss)
    return publish_tiny(target, model, tokenizer, spec)


def ensure_small_base(target: Path, spec: SmallBaseSpec | None = None) -> Path:
    """Build the base once; reuse a complete build."""
    if (target / "kubetune_tiny.json").exists():
        return target
    return build_small_base(target, spec)
