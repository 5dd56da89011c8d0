"""Tokenize examples into input ids and labels (loss mask), using the tokenizer's template.

Chat rows are rendered with the tokenizer's own chat template. The assistant tokens
(which carry the loss when ``completionOnlyLoss`` is on) come from the template's
``{% generation %}`` markers when it has them (``return_assistant_tokens_mask``); for
templates without markers they are found by rendering the conversation turn by turn
and taking the tokens each assistant turn adds. The first label of every sample is
always -100: its "target" would be the previous sample's last token in a packed batch,
and in an unpacked one it is shifted out anyway, so masking it is free and makes packed
and padded batches compute the same loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune_trainer.data.formats import (
    ChatExample,
    Conversation,
    Example,
    PreferenceExample,
    PromptCompletionExample,
    PromptOnlyExample,
    RowError,
    TextExample,
    Turn,
    UnpairedExample,
)

IGNORE = -100


@dataclass(frozen=True)
class EncodedSample:
    """One training sequence."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def num_label_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


@dataclass(frozen=True)
class EncodedPair:
    """A preference pair: prompt+chosen and prompt+rejected, labels on the responses."""

    chosen: EncodedSample
    rejected: EncodedSample

    @property
    def truncated(self) -> bool:
        return self.chosen.truncated or self.rejected.truncated

    @property
    def input_ids(self) -> list[int]:  # total length bookkeeping only
        return self.chosen.input_ids + self.rejected.input_ids


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt of online RL, rendered up to where the response starts; no labels (the
    policy writes the response). ``truncated``: the prompt's start was cut to fit."""

    prompt_ids: list[int]
    answer: str | None
    truncated: bool = False

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids

    @property
    def num_label_tokens(self) -> int:
        return 0


@dataclass(frozen=True)
class EncodedUnpaired:
    """A completion with its desirability (KTO): labels on the completion only.

    ``kl`` is the mismatched sequence of the KL reference point (this prompt with another
    example's completion), set for a whole split by ``with_kl_completions``."""

    sample: EncodedSample
    desirable: bool
    prompt_length: int
    kl: EncodedSample | None = None

    @property
    def truncated(self) -> bool:
        return self.sample.truncated

    @property
    def input_ids(self) -> list[int]:
        return self.sample.input_ids


Encoded = EncodedSample | EncodedPair | EncodedPrompt | EncodedUnpaired


def _prompt_length(sample: EncodedSample) -> int:
    """Tokens before the first label (label 0 is always masked, so at least 1)."""
    return next(i for i, label in enumerate(sample.labels) if label != IGNORE and i > 0)


def unpair(pair: EncodedPair) -> list[EncodedUnpaired]:
    """A pair as one desirable and one undesirable example (TRL's unpair_preference_dataset).

    KTO needs only a per-example judgement, and a pair holds two: its chosen completion is
    desirable and its rejected one undesirable, so preference data trains KTO as is."""
    return [
        EncodedUnpaired(pair.chosen, True, _prompt_length(pair.chosen)),
        EncodedUnpaired(pair.rejected, False, _prompt_length(pair.rejected)),
    ]


def with_kl_completions(
    examples: list[EncodedUnpaired], max_seq_length: int
) -> list[EncodedUnpaired]:
    """Give example ``i`` the KL sequence prompt_i + completion_(i-1) (cyclic).

    TRL rotates the completions by one within each batch of a sequentially read dataset;
    our batches are shuffled, so the rotation is over the split instead: each example's
    mismatched partner is fixed, which lets the reference log-prob of its KL sequence be
    computed once before training like the others."""
    out = []
    for i, example in enumerate(examples):
        partner = examples[i - 1]
        ids = (
            example.sample.input_ids[: example.prompt_length]
            + partner.sample.input_ids[partner.prompt_length :]
        )
        labels = [IGNORE] * example.prompt_length + partner.sample.labels[partner.prompt_length :]
        truncated = len(ids) > max_seq_length
        kl = EncodedSample(ids[:max_seq_length], labels[:max_seq_length], truncated)
        out.append(EncodedUnpaired(example.sample, example.desirable, example.prompt_length, kl))
    return out


class Encoder:
    """Turns examples into token ids and loss masks for one tokenizer and length limit."""

    def __init__(self, tokenizer: Any, max_seq_length: int, completion_only_loss: bool = True):
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.completion_only_loss = completion_only_loss
        template = getattr(tokenizer, "chat_template", None) or ""
        self.has_template = bool(template)
        self.has_generation_markers = "{% generation %}" in template or "{%- generation" in template
        self.eos_id: int | None = tokenizer.eos_token_id

    # -- public -----------------------------------------------------------------
    def encode(self, example: Example) -> Encoded:
        if isinstance(example, ChatExample):
            ids, mask = self._chat(example.messages)
            return self._sample(ids, mask)
        if isinstance(example, PromptCompletionExample):
            prompt_ids, completion_ids = self._prompt_completion(example.prompt, example.completion)
            return self._sample(
                prompt_ids + completion_ids, [0] * len(prompt_ids) + [1] * len(completion_ids)
            )
        if isinstance(example, TextExample):
            ids = self._with_eos(self._text_ids(example.text, special=True))
            return self._sample(ids, [1] * len(ids), all_tokens=True)
        if isinstance(example, PreferenceExample):
            return self._pair(example)
        if isinstance(example, PromptOnlyExample):
            return self._prompt(example)
        if isinstance(example, UnpairedExample):
            prompt_ids, completion_ids = self._prompt_completion(example.prompt, example.completion)
            sample = self._sample(
                prompt_ids + completion_ids,
                [0] * len(prompt_ids) + [1] * len(completion_ids),
                force_completion_only=True,
            )
            return EncodedUnpaired(sample, example.desirable, _prompt_length(sample))
        raise RowError(f"cannot encode {type(example).__name__}")

    # -- formats ----------------------------------------------------------------
    def _chat(self, messages: Conversation) -> tuple[list[int], list[int]]:
        if not self.has_template:
            raise RowError(
                "the tokenizer has no chat template; use format text or promptCompletion"
            )
        if self.has_generation_markers:
            out = self.tokenizer.apply_chat_template(
                messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            )
            return list(out["input_ids"]), list(out["assistant_masks"])
        ids = self._render(messages)
        mask = [0] * len(ids)
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._render(messages[:index], generation_prompt=True) if index else []
            upto = self._render(messages[: index + 1])
            start = len(before) if ids[: len(before)] == before else _common_prefix(ids, before)
            end = min(len(upto), len(ids))
            span = ids[start:end]
            if self.eos_id is not None and self.eos_id in span:
                # template text after the turn's end token (e.g. a newline) is not generated
                end = start + len(span) - span[::-1].index(self.eos_id)
            for pos in range(start, end):
                mask[pos] = 1
        return ids, mask

    def _prompt_completion(self, prompt: Turn, completion: Turn) -> tuple[list[int], list[int]]:
        if isinstance(prompt, list) and isinstance(completion, list):
            prompt_ids = self._render(prompt, generation_prompt=True)
            full = self._render(prompt + completion)
            start = _common_prefix(full, prompt_ids)
            return full[:start], full[start:]
        assert isinstance(prompt, str) and isinstance(completion, str)
        prompt_ids = self._text_ids(prompt, special=True)
        completion_ids = self._with_eos(self._text_ids(completion, special=False))
        return prompt_ids, completion_ids

    def _pair(self, example: PreferenceExample) -> EncodedPair:
        sides = []
        for response in (example.chosen, example.rejected):
            prompt = example.prompt if example.prompt is not None else ""
            prompt_ids, response_ids = self._prompt_completion(prompt, response)
            ids = prompt_ids + response_ids
            mask = [0] * len(prompt_ids) + [1] * len(response_ids)
            sides.append(self._sample(ids, mask, force_completion_only=True))
        return EncodedPair(sides[0], sides[1])

    def _prompt(self, example: PromptOnlyExample) -> EncodedPrompt:
        if isinstance(example.prompt, list):
            ids = self._render(example.prompt, generation_prompt=True)
        else:
            ids = self._text_ids(example.prompt, special=True)
        if not ids:
            raise RowError("the prompt encodes to zero tokens")
        # keep the end: the question is usually last, and generation continues from it
        truncated = len(ids) > self.max_seq_length
        return EncodedPrompt(ids[-self.max_seq_length :], example.answer, truncated)

    # -- helpers ----------------------------------------------------------------
    def _sample(
        self,
        ids: list[int],
        mask: list[int],
        *,
        all_tokens: bool = False,
        force_completion_only: bool = False,
    ) -> EncodedSample:
        if not ids:
            raise RowError("the row encodes to zero tokens")
        truncated = len(ids) > self.max_seq_length
        ids = ids[: self.max_seq_length]
        mask = mask[: self.max_seq_length]
        only_completion = force_completion_only or (self.completion_only_loss and not all_tokens)
        labels = [
            tok if (m or not only_completion) else IGNORE for tok, m in zip(ids, mask, strict=True)
        ]
        labels[0] = IGNORE
        if all(x == IGNORE for x in labels):
            if truncated:
                raise RowError(
                    f"no trainable tokens left after truncation to maxSeqLength "
                    f"{self.max_seq_length} (the prompt alone fills it)"
                )
            raise RowError("the row has no trainable (completion) tokens")
        return EncodedSample(ids, labels, truncated)

    def _render(self, messages: Conversation, generation_prompt: bool = False) -> list[int]:
        if not self.has_template:
            raise RowError("message lists need a tokenizer with a chat template")
        out = self.tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=True
        )
        return list(out["input_ids"])

    def _text_ids(self, text: str, *, special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def _with_eos(self, ids: list[int]) -> list[int]:
        """Append EOS (once) so the model learns where a completion ends."""
        if self.eos_id is None or (ids and ids[-1] == self.eos_id):
            return ids
        return [*ids, self.eos_id]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
