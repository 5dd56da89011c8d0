"""Model loading and generation for the server, with the trainer's own loaders.

A base model directory plus an optional kubetune adapter output: a PEFT adapter (LoRA,
DoRA, prefix, prompt tuning: ``adapter_config.json``) or a bottleneck adapter
(``kubetune_adapter.json``). A full fine-tune's output is an ordinary model directory
and is served as the base. The tokenizer comes from the adapter directory when the
trainer saved one there (it always does), else from the base.

Time to first token is measured, not estimated: a streamer's ``put`` is called by
``generate`` once with the prompt and then once per new token, so the second call is
the moment the first generated token exists.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from kubetune_trainer.errors import ModelUnavailableError
from kubetune_trainer.methods.adapters import ADAPTER_CONFIG, load_bottleneck_adapter
from kubetune_trainer.models.load import load_causal_lm, load_tokenizer
from kubetune_trainer.serving.protocol import (
    BadRequest,
    FinishReason,
    Generation,
    GenerationRequest,
)

PEFT_CONFIG = "adapter_config.json"


class _FirstTokenClock:
    """A ``generate`` streamer that notes when the first new token arrives."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_token_at: float | None = None

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2:  # call 1 is the prompt
            self.first_token_at = time.monotonic()

    def end(self) -> None:
        pass


def load_model(model_dir: Path, adapter_dir: Path | None, trust_remote_code: bool = False) -> Any:
    """The base causal LM, with the adapter of ``adapter_dir`` attached when given."""
    if adapter_dir is None:
        return load_causal_lm(model_dir, dtype=torch.float32, trust_remote_code=trust_remote_code)
    if (adapter_dir / PEFT_CONFIG).exists():
        from peft import PeftModel

        base = load_causal_lm(model_dir, dtype=torch.float32, trust_remote_code=trust_remote_code)
        return PeftModel.from_pretrained(base, adapter_dir)
    if (adapter_dir / ADAPTER_CONFIG).exists():
        return load_bottleneck_adapter(model_dir, adapter_dir)
    raise ModelUnavailableError(
        f"{adapter_dir} is not an adapter output (no {PEFT_CONFIG} or {ADAPTER_CONFIG}); "
        "serve a full fine-tune's output as --model instead"
    )


class HFEngine:
    """One model, one generation at a time (the server runs it on a single worker thread)."""

    def __init__(
        self, model_dir: Path, adapter_dir: Path | None = None, trust_remote_code: bool = False
    ) -> None:
        tokenizer_dir = model_dir
        if adapter_dir is not None and (adapter_dir / "tokenizer_config.json").exists():
            tokenizer_dir = adapter_dir
        self.tokenizer = load_tokenizer(tokenizer_dir, trust_remote_code)
        self.model = load_model(model_dir, adapter_dir, trust_remote_code)
        self.model.eval()
        config = self.model.config
        self.max_positions = int(getattr(config, "max_position_embeddings", 0) or 1_000_000)
        eos = self.tokenizer.eos_token_id
        self.eos_ids = {int(eos)} if eos is not None else set()

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """The prompt of a chat: the tokenizer's chat template, else ``role: content`` lines."""
        if getattr(self.tokenizer, "chat_template", None):
            return str(
                self.tokenizer.apply_chat_template(
                    list(messages), tokenize=False, add_generation_prompt=True
                )
            )
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n".join([*lines, "assistant:"])

    def generate(self, request: GenerationRequest) -> Generation:
        encoded = self.tokenizer(
            request.prompt, return_tensors="pt", add_special_tokens=not request.chat
        )
        input_ids = encoded["input_ids"]
        n_prompt = int(input_ids.shape[1])
        if n_prompt == 0:
            raise BadRequest("the prompt is empty after tokenization")
        if n_prompt + request.max_tokens > self.max_positions:
            raise BadRequest(
                f"prompt ({n_prompt} tokens) + max_tokens ({request.max_tokens}) exceeds the "
                f"model's context of {self.max_positions} tokens"
            )
        clock = _FirstTokenClock()
        sampling: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None}
        if request.temperature > 0:
            sampling = {"do_sample": True, "temperature": request.temperature, "top_p": 1.0}
        with torch.inference_mode():
            if request.seed is not None:
                torch.manual_seed(request.seed)
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=encoded["attention_mask"],
                max_new_tokens=request.max_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=sorted(self.eos_ids) or None,
                use_cache=True,
                streamer=clock,
                **sampling,
            )
        new = [int(t) for t in output[0, n_prompt:]]
        # generate stops early only at EOS; running out of max_tokens is "length".
        stopped = bool(new) and (new[-1] in self.eos_ids or len(new) < request.max_tokens)
        finish: FinishReason = "stop" if stopped else "length"
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in request.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        return Generation(
            text=text,
            prompt_tokens=n_prompt,
            completion_tokens=len(new),
            finish_reason=finish,
            first_token_at=clock.first_token_at,
        )
