"""Data formats, validation reports, truncation counts, readers and the batch schedule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune_trainer.config import load_job
from kubetune_trainer.data.batching import BatchPlan, eval_micro_batches
from kubetune_trainer.data.encode import IGNORE, Encoder
from kubetune_trainer.data.formats import RowError, parse_row
from kubetune_trainer.data.readers import iter_rows
from kubetune_trainer.data.validate import hold_out, prepare_data
from kubetune_trainer.errors import InvalidDataError
from tests.trainer.helpers import manifest, read_json, train_in_process, write_config

GOOD = {
    "messages": [
        {"role": "user", "content": "Sort these numbers: 3 1"},
        {"role": "assistant", "content": "1 3"},
    ]
}
BAD_LINES = [
    ("{not json", "invalid JSON"),
    (json.dumps({"text": "no messages"}), "missing column 'messages'"),
    (json.dumps({"messages": [{"role": "bot", "content": "hi"}]}), "role 'bot'"),
    (
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
        "no assistant message",
    ),
    (json.dumps([1, 2]), "not an object"),
]


def _write_mixed(path: Path) -> None:
    lines = [json.dumps(GOOD)]
    for bad, _ in BAD_LINES:
        lines += [bad, json.dumps(GOOD)]
    path.write_text("\n".join(lines) + "\n")


def _cfg(tmp_path: Path, model: Path, train: Path, fmt: str = "chat", **dataset: object):
    doc = manifest(
        "lora", model, train, fmt, tmp_path / "out", dataset=dataset, peft={"lora": {"r": 2}}
    )
    return load_job(write_config(doc, tmp_path / "job.json"))


def test_bad_rows_are_reported_with_file_line_and_reason(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    data = tmp_path / "mixed.jsonl"
    _write_mixed(data)
    cfg = _cfg(tmp_path, tiny_model, data)
    with pytest.raises(InvalidDataError) as info:
        prepare_data(cfg, AutoTokenizer.from_pretrained(tiny_model))
    message = str(info.value)
    assert f"5 of {1 + 2 * len(BAD_LINES)} train rows are invalid" in message
    for index, (_, reason) in enumerate(BAD_LINES):
        line = 2 + 2 * index
        assert f"{data}:{line}: " in message, message
        assert reason in message


def test_skip_invalid_rows_counts_them_everywhere(tiny_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "mixed.jsonl"
    _write_mixed(data)
    for _ in range(3):  # enough good rows for a few steps
        with data.open("a") as handle:
            handle.write(json.dumps(GOOD) + "\n")
    out = tmp_path / "out"
    doc = manifest(
        "lora",
        tiny_model,
        data,
        "chat",
        out,
        dataset={"skipInvalidRows": True},
        hyper={"maxSteps": 2},
        peft={"lora": {"r": 2}},
    )
    train_in_process(doc, tmp_path)
    report = read_json(out / "data_report.json")[0]
    assert report["invalidRows"] == 5 and report["skippedRows"] == 5
    assert report["validRows"] == report["rows"] - 5
    issues = [json.loads(line) for line in (out / "data_issues.jsonl").read_text().splitlines()]
    assert [i["line"] for i in issues] == [2, 4, 6, 8, 10]
    assert "| 5 |" in (out / "README.md").read_text()  # skipped count in the model card
    progress = read_json(out / "progress.json")
    assert progress["skippedRows"] == 5


def test_truncation_is_counted_and_rows_without_targets_rejected(
    tiny_model: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    long_answer = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "one two " * 40},
        ]
    }
    long_prompt = {
        "messages": [
            {"role": "user", "content": "one two " * 40},
            {"role": "assistant", "content": "ok"},
        ]
    }
    data = tmp_path / "long.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in (GOOD, long_answer, long_prompt)) + "\n")
    cfg = _cfg(tmp_path, tiny_model, data, maxSeqLength=32, skipInvalidRows=True)
    prepared = prepare_data(cfg, AutoTokenizer.from_pretrained(tiny_model))
    report = prepared.train.report
    assert report.truncated_rows == 1  # the long answer, cut to 32 tokens but kept
    assert report.invalid_rows == 1  # the long prompt leaves no target tokens
    assert "no trainable tokens left after truncation" in report.issues[0].reason
    assert all(len(e.input_ids) <= 32 for e in prepared.train.examples)


def test_chat_labels_cover_only_assistant_tokens(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    example = parse_row("chat", GOOD, None)
    sample = Encoder(tokenizer, 256).encode(example)
    target = tokenizer.decode([t for t in sample.labels if t != IGNORE])
    assert target == "1 3<|im_end|>"
    everything = Encoder(tokenizer, 256, completion_only_loss=False).encode(example)
    assert sum(t != IGNORE for t in everything.labels) == len(everything.input_ids) - 1


def test_templates_without_generation_markers_use_turn_diffs(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    plain = AutoTokenizer.from_pretrained(tiny_model)
    plain.chat_template = tokenizer.chat_template.replace("{% generation %}", "").replace(
        "{% endgeneration %}", ""
    )
    convo = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Sort these numbers: 3 1"},
            {"role": "assistant", "content": "1 3"},
            {"role": "user", "content": "Reverse these words: lamp cloud"},
            {"role": "assistant", "content": "cloud lamp"},
        ]
    }
    example = parse_row("chat", convo, None)
    with_markers = Encoder(tokenizer, 256).encode(example)
    without = Encoder(plain, 256).encode(example)
    assert with_markers.input_ids == without.input_ids
    assert with_markers.labels == without.labels


def test_formats_field_mapping_and_preference_forms() -> None:
    row = {"q": "Sort: 2 1", "a": "1 2"}
    ex = parse_row("promptCompletion", row, {"prompt": "q", "completion": "a"})
    assert ex.prompt == "Sort: 2 1" and ex.completion == "1 2"
    with pytest.raises(RowError, match="missing column 'prompt'"):
        parse_row("promptCompletion", row, None)
    implicit = {
        "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
        "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}],
    }
    pref = parse_row("preference", implicit, None)
    assert pref.prompt == [{"role": "user", "content": "q"}]
    assert pref.chosen == [{"role": "assistant", "content": "good"}]
    with pytest.raises(RowError, match="identical"):
        parse_row("preference", {"prompt": "p", "chosen": "x", "rejected": "x"}, None)
    with pytest.raises(RowError, match="empty"):
        parse_row("text", {"text": "   "}, None)


def test_parquet_and_saved_dataset_dirs(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict

    rows = [{"text": f"row {i}"} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    parsed = list(iter_rows(tmp_path / "d.parquet"))
    assert [r.value for r in parsed] == rows and parsed[2].line == 3
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    assert [r.value for r in iter_rows(tmp_path / "hf")] == rows
    DatasetDict(
        {"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:2])}
    ).save_to_disk(str(tmp_path / "dd"))
    assert len(list(iter_rows(tmp_path / "dd", split="eval"))) == 2


def test_hold_out_is_deterministic_and_disjoint() -> None:
    examples = list(range(40))
    a = hold_out(examples, 0.1, seed=3)  # type: ignore[arg-type]
    assert a == hold_out(examples, 0.1, seed=3)  # type: ignore[arg-type]
    train, held = a
    assert len(held) == 4 and not set(train) & set(held) and len(train) + len(held) == 40


@pytest.mark.parametrize("units,world,micro,accum", [(37, 2, 3, 2), (8, 1, 4, 2), (5, 2, 2, 2)])
def test_batch_plan_covers_every_sample_once_per_epoch(
    units: int, world: int, micro: int, accum: int
) -> None:
    plan = BatchPlan(units, micro * world * accum, micro, world, accum, seed=5)
    seen: list[int] = []
    for step in range(plan.steps_per_epoch):
        for rank in range(world):
            micro_batches = plan.micro_batches(step, rank)
            assert len(micro_batches) == accum  # same number of passes on every rank
            for mb in micro_batches:
                assert len(mb) <= micro
                seen.extend(mb)
    assert sorted(seen) == list(range(units))
    assert plan.micro_batches(3, 0) == BatchPlan(
        units, micro * world * accum, micro, world, accum, 5
    ).micro_batches(3, 0)
    assert plan.order(0) != plan.order(1) or units < 3
    shards = [eval_micro_batches(units, micro, world, r) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    assert sorted(i for s in shards for mb in s for i in mb) == list(range(units))
