"""The promptOnly format of online RL: prompts (string or conversation) and their answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune_trainer.data.encode import EncodedPrompt, Encoder
from kubetune_trainer.data.formats import PromptOnlyExample, RowError, parse_row


def test_a_string_prompt_keeps_its_answer_as_text() -> None:
    example = parse_row("promptOnly", {"prompt": "Count: a b", "answer": 2}, None)
    assert example == PromptOnlyExample("Count: a b", "2")
    renamed = parse_row(
        "promptOnly", {"q": "Count: a", "gold": "1"}, {"prompt": "q", "answer": "gold"}
    )
    assert renamed == PromptOnlyExample("Count: a", "1")
    assert parse_row("promptOnly", {"prompt": "Say hi"}, None) == PromptOnlyExample("Say hi", None)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"prompt": "x", "answer": True}, "answer must be a string or a number"),
        ({"prompt": "x", "answer": ["1"]}, "answer must be a string or a number"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"answer": "1"}, "missing column 'prompt'"),
        (
            {"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            "must not end with an assistant message",
        ),
    ],
)
def test_bad_prompt_rows_are_refused_with_the_reason(row: dict, reason: str) -> None:
    with pytest.raises(RowError, match=reason):
        parse_row("promptOnly", row, None)


def test_prompts_encode_up_to_the_response_and_keep_their_end(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    encoder = Encoder(tokenizer, max_seq_length=16)
    chat = [{"role": "user", "content": "How many words: river lamp"}]
    encoded = encoder.encode(PromptOnlyExample(chat, "2"))
    assert isinstance(encoded, EncodedPrompt)
    rendered = tokenizer.apply_chat_template(
        chat, tokenize=True, add_generation_prompt=True, return_dict=True
    )
    ids = list(rendered["input_ids"])
    assert encoded.prompt_ids == ids[-16:]  # generation continues from the template's prompt
    assert encoded.answer == "2" and encoded.num_label_tokens == 0

    long_text = "apple " * 40 + "How many?"
    cut = encoder.encode(PromptOnlyExample(long_text, None))
    assert isinstance(cut, EncodedPrompt) and cut.truncated
    full = tokenizer(long_text)["input_ids"]
    assert cut.prompt_ids == full[-16:]  # the question at the end survives truncation
