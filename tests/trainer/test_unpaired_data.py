"""Format ``unpaired`` (KTO): strict parsing, encoding, unpairing of preference rows, KL pairs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kubetune_trainer.config import load_job
from kubetune_trainer.data.batching import collate
from kubetune_trainer.data.encode import (
    IGNORE,
    EncodedSample,
    EncodedUnpaired,
    Encoder,
    with_kl_completions,
)
from kubetune_trainer.data.formats import RowError, UnpairedExample, parse_row
from kubetune_trainer.data.validate import prepare_data
from tests.trainer.helpers import manifest, write_config

CHAT_ROW = {
    "prompt": [{"role": "user", "content": "Sort these numbers: 3 1"}],
    "completion": [{"role": "assistant", "content": "1 3"}],
    "label": False,
}


def test_unpaired_rows_parse_strings_messages_and_mapped_label() -> None:
    ex = parse_row("unpaired", {"prompt": "Sort: 2 1", "completion": " 1 2", "label": True}, None)
    assert ex == UnpairedExample("Sort: 2 1", " 1 2", True)
    chat = parse_row("unpaired", CHAT_ROW, None)
    assert isinstance(chat, UnpairedExample) and chat.desirable is False
    assert chat.completion == [{"role": "assistant", "content": "1 3"}]
    mapped = parse_row(
        "unpaired",
        {"q": "p", "a": "c", "good": False},
        {"prompt": "q", "completion": "a", "label": "good"},
    )
    assert mapped == UnpairedExample("p", "c", False)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"prompt": "p", "completion": "c", "label": "true"}, "not str 'true'"),
        ({"prompt": "p", "completion": "c", "label": 1}, "not int 1"),
        ({"prompt": "p", "completion": "c"}, "missing column 'label'"),
        ({"prompt": "p", "completion": "c", "label": None}, "missing column 'label'"),
        ({"prompt": "p", "label": True}, "missing column 'completion'"),
        ({"prompt": "p", "completion": "  ", "label": True}, "completion is empty"),
        ({**CHAT_ROW, "completion": "1 3"}, "both be strings or both message lists"),
        (
            {**CHAT_ROW, "completion": [{"role": "user", "content": "more?"}]},
            "must end with an assistant message",
        ),
    ],
)
def test_unpaired_rows_are_checked_strictly(row: dict, reason: str) -> None:
    with pytest.raises(RowError, match=reason):
        parse_row("unpaired", row, None)


def test_encoding_labels_only_the_completion(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    encoder = Encoder(tokenizer, max_seq_length=128, completion_only_loss=False)
    row = {"prompt": "Sort these numbers: 3 1\nAnswer:", "completion": " 1 3", "label": False}
    enc = encoder.encode(parse_row("unpaired", row, None))
    assert isinstance(enc, EncodedUnpaired) and enc.desirable is False
    prompt_ids = tokenizer(row["prompt"])["input_ids"]
    completion_ids = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
    completion_ids = [*completion_ids, tokenizer.eos_token_id]
    assert enc.prompt_length == len(prompt_ids)
    assert enc.sample.input_ids == prompt_ids + completion_ids
    # completion-only even when completionOnlyLoss is off: KTO scores the completion
    assert enc.sample.labels == [IGNORE] * len(prompt_ids) + completion_ids


def _sample(prompt: list[int], completion: list[int]) -> EncodedUnpaired:
    ids = prompt + completion
    labels = [IGNORE] * len(prompt) + completion
    return EncodedUnpaired(EncodedSample(ids, labels), True, len(prompt))


def test_kl_sequences_pair_each_prompt_with_the_previous_completion() -> None:
    examples = [_sample([1, 2], [3]), _sample([4], [5, 6]), _sample([7, 8, 9], [10, 11])]
    out = with_kl_completions(examples, max_seq_length=4)
    kl = [e.kl for e in out]
    assert all(k is not None for k in kl)
    assert [k.input_ids for k in kl if k] == [[1, 2, 10, 11], [4, 3], [7, 8, 9, 5]]
    assert [k.labels for k in kl if k] == [
        [IGNORE, IGNORE, 10, 11],
        [IGNORE, 3],
        [IGNORE, IGNORE, IGNORE, 5],
    ]
    assert [k.truncated for k in kl if k] == [False, False, True]
    assert [e.sample for e in out] == [e.sample for e in examples]

    batch = collate(out[:2], padding_free=True, pad_token_id=0, dummy=out[0])
    assert batch.desirable is not None and batch.desirable.tolist() == [True, True]
    assert batch.pair_weights is not None and batch.pair_weights.tolist() == [1.0, 1.0]
    assert batch.kl is not None and batch.kl.inputs["input_ids"].tolist() == [[1, 2, 10, 11, 4, 3]]
    dummy = collate([], padding_free=False, pad_token_id=0, dummy=out[0])
    assert dummy.pair_weights is not None and dummy.pair_weights.tolist() == [0.0]
    assert dummy.kl is not None and dummy.kl.label_tokens == 0 and dummy.label_tokens == 0
    moved = batch.to(torch.device("cpu"))
    assert moved.kl is not None and moved.desirable is not None


def test_kto_unpairs_preference_rows(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    doc = manifest(
        "kto", tiny_model, data_dir / "pref.jsonl", "preference", tmp_path / "o", rlhf={"kto": {}}
    )
    job = load_job(write_config(doc, tmp_path / "job.json"))
    data = prepare_data(job, AutoTokenizer.from_pretrained(tiny_model))
    rows = data.train.report.valid_rows
    examples = data.train.examples
    assert rows == 32 and len(examples) == 2 * rows
    assert all(isinstance(e, EncodedUnpaired) for e in examples)
    first, second = examples[0], examples[1]
    assert isinstance(first, EncodedUnpaired) and isinstance(second, EncodedUnpaired)
    assert (first.desirable, second.desirable) == (True, False)
    prompt = first.sample.input_ids[: first.prompt_length]
    assert second.sample.input_ids[: second.prompt_length] == prompt
    assert first.sample.input_ids != second.sample.input_ids

    dpo = manifest(
        "dpo", tiny_model, data_dir / "pref.jsonl", "preference", tmp_path / "o", rlhf={"dpo": {}}
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    pairs = prepare_data(load_job(write_config(dpo, tmp_path / "dpo.json")), tokenizer)
    assert len(pairs.train.examples) == rows  # DPO keeps the pairs
