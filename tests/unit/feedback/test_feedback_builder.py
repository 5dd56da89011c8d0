"""`kubetune feedback build`'s rules: labels from thumbs and 1-5 scores, corrections,
pairing, deduplication, conflicts, reviews over served feedback, the personal-data
policies and the report (counts only), and the CLI."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kubetune.cli.main import app
from kubetune_trainer.data.formats import parse_row
from kubetune_trainer.feedback import builder
from kubetune_trainer.feedback.builder import (
    BuildOptions,
    Scrubber,
    build,
    default_scrubber,
)
from kubetune_trainer.privacy import redact

EMAIL = "jane.doe@example.com"


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _build(
    tmp_path: Path,
    feedback: Sequence[dict[str, Any]] = (),
    reviews: Sequence[dict[str, Any]] = (),
    scrubber: Scrubber | None = redact,
    **options: Any,
) -> tuple[builder.BuildReport, list[dict[str, Any]], list[dict[str, Any]]]:
    paths = [_jsonl(tmp_path / "log.jsonl", list(feedback))] if feedback else []
    review_paths = [_jsonl(tmp_path / "reviews.jsonl", list(reviews))] if reviews else []
    out = tmp_path / "out"
    report = build(out, paths, review_paths, BuildOptions(**options), scrubber)
    pref, unpaired = _read(out / "preference.jsonl"), _read(out / "unpaired.jsonl")
    for row in pref:
        parse_row("preference", row, None)
    for row in unpaired:
        parse_row("unpaired", row, None)
    assert json.loads((out / "report.json").read_text()) == report.to_json()
    return report, pref, unpaired


def _labels(unpaired: list[dict[str, Any]]) -> dict[str, bool]:
    return {r["completion"]: r["label"] for r in unpaired}


def test_a_correction_is_chosen_over_the_original(tmp_path: Path) -> None:
    chat = [{"role": "user", "content": "capital of France?"}]
    report, pref, unpaired = _build(
        tmp_path,
        [{"prompt": chat, "response": "Lyon", "rating": "positive", "correction": "Paris"}],
    )
    assistant = [{"role": "assistant", "content": "Paris"}]
    assert pref == [
        {
            "prompt": chat,
            "chosen": assistant,
            "rejected": [{"role": "assistant", "content": "Lyon"}],
        }
    ]
    # the correction overrides the thumb: the original is the undesirable answer
    assert {r["completion"][0]["content"]: r["label"] for r in unpaired} == {
        "Lyon": False,
        "Paris": True,
    }
    assert report.judgements == 2 and report.kept == {"preference": 1, "unpaired": 2}


@pytest.mark.parametrize(
    ("score", "positive_at", "negative_at", "label"),
    [
        (5, 4, 2, True),
        (4, 4, 2, True),
        (3, 4, 2, None),
        (2, 4, 2, False),
        (1, 4, 2, False),
        (4, 5, 2, None),
        (3, 4, 3, False),
    ],
)
def test_score_thresholds(
    tmp_path: Path, score: int, positive_at: int, negative_at: int, label: bool | None
) -> None:
    report, _, unpaired = _build(
        tmp_path,
        [{"prompt": "p", "response": "r", "rating": score}],
        positive_at=positive_at,
        negative_at=negative_at,
    )
    if label is None:
        assert unpaired == [] and report.dropped["neutral"] == 1
    else:
        assert _labels(unpaired) == {"r": label}


def test_thumbs_in_every_spelling(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"prompt": "p", "response": "a", "rating": "positive"},
        {"prompt": "p", "response": "b", "thumb": "down"},
        {"prompt": "p", "response": "c", "rating": True},
        {"prompt": "p", "response": "d", "score": 1},
    ]
    _, _, unpaired = _build(tmp_path, rows)
    assert _labels(unpaired) == {"a": True, "b": False, "c": True, "d": False}


def test_pairs_by_label_and_by_score_gap_widest_first(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"prompt": "q", "response": "five", "rating": 5},
        {"prompt": "q", "response": "three", "rating": 3},
        {"prompt": "q", "response": "one", "rating": 1},
        {"prompt": "other", "response": "up", "rating": "positive"},
        {"prompt": "other", "response": "up too", "rating": "positive"},
    ]
    _, pref, _ = _build(tmp_path, rows)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in pref] == [
        ("q", "five", "one"),
        ("q", "five", "three"),
        ("q", "three", "one"),
    ]  # two thumbs up make no pair
    capped, pref, _ = _build(tmp_path, rows, max_pairs_per_prompt=1)
    assert [(r["chosen"], r["rejected"]) for r in pref] == [("five", "one")]
    assert capped.pairs_capped == 2


def test_duplicates_merge_with_normalised_whitespace(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"prompt": "hello  there", "response": "hi!", "rating": "positive"},
        {"prompt": " hello there\n", "response": "hi!  ", "rating": 5},
        {"prompt": "hello there", "response": "go away", "rating": "negative"},
    ]
    report, pref, unpaired = _build(tmp_path, rows)
    assert len(unpaired) == 2 and report.dropped["duplicate"] == 1
    assert [(r["chosen"], r["rejected"]) for r in pref] == [("hi!", "go away")]


def test_conflicting_labels_are_dropped_or_outvoted(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"prompt": "p", "response": "r", "rating": "positive"},
        {"prompt": "p", "response": "r", "rating": "positive"},
        {"prompt": "p", "response": "r", "rating": "negative"},
        {"prompt": "p", "response": "s", "rating": "positive"},
        {"prompt": "p", "response": "s", "rating": "negative"},
    ]
    report, pref, unpaired = _build(tmp_path, rows)
    assert unpaired == [] and pref == []
    assert report.dropped["conflicting"] == 5
    report, _, unpaired = _build(tmp_path, rows, conflicts="majority")
    assert _labels(unpaired) == {"r": True}  # s is a tie: dropped
    assert report.dropped["conflicting"] == 1 + 2 and report.dropped["duplicate"] == 1


def test_a_review_outranks_served_feedback(tmp_path: Path) -> None:
    report, _, unpaired = _build(
        tmp_path,
        feedback=[{"prompt": "p", "response": "r", "rating": "negative"}],
        reviews=[{"prompt": "p", "response": "r", "rating": 5, "reviewer": "ann"}],
    )
    assert _labels(unpaired) == {"r": True}
    assert report.dropped["superseded"] == 1 and report.dropped["conflicting"] == 0
    assert report.rows_read == {"feedback": 1, "reviews": 1}
    assert "ann" not in (tmp_path / "out" / "unpaired.jsonl").read_text()


def test_unusable_rows_are_counted_by_reason(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text(
        "not json\n[1, 2]\n"
        + json.dumps({"prompt": "", "response": "r", "rating": 5})
        + "\n"
        + json.dumps({"prompt": "p", "response": "  ", "rating": 5})
        + "\n"
        + json.dumps({"prompt": "p", "response": "r"})
        + "\n"
        + json.dumps({"prompt": "p", "response": "r", "rating": 9})
        + "\n"
        + json.dumps({"prompt": "p", "response": "r", "rating": "meh"})
        + "\n"
        + json.dumps({"prompt": "p", "response": "r", "correction": " r "})  # no change
        + "\n"
        + json.dumps({"prompt": "p", "response": "r", "rating": "positive", "score": 1})
        + "\n"
    )
    out = tmp_path / "out"
    report = build(out, [log], [], BuildOptions(personal_data="allow"))
    assert report.rows_read["feedback"] == 9
    assert report.dropped["invalid"] == 5
    assert report.dropped["empty"] == 2
    assert report.dropped["unrated"] == 2
    assert report.kept == {"preference": 0, "unpaired": 0}


def test_personal_data_is_redacted_in_every_text(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {
            "prompt": [
                {"role": "system", "content": "be nice"},
                {"role": "user", "content": f"mail me at {EMAIL} or +44 20 7946 0958"},
            ],
            "response": f"sure, {EMAIL}",
            "rating": 1,
            "correction": f"I cannot email {EMAIL}.",
        }
    ]
    report, pref, unpaired = _build(tmp_path, rows)
    text = "".join(p.read_text() for p in (tmp_path / "out").iterdir())
    assert EMAIL not in text and "7946" not in text
    assert "<EMAIL>" in json.dumps(pref)
    assert report.personal_data == {"email": 3, "phone": 1}
    assert len(pref) == 1 and len(unpaired) == 2

    dropped, pref, unpaired = _build(tmp_path, rows, personal_data="drop")
    assert pref == [] and unpaired == [] and dropped.dropped["personal_data"] == 1
    allowed, pref, _ = _build(tmp_path, rows, scrubber=None, personal_data="allow")
    assert EMAIL in json.dumps(pref) and allowed.personal_data == {}


def test_csv_reviews(tmp_path: Path) -> None:
    reviews = tmp_path / "reviews.csv"
    reviews.write_text(
        "prompt,response,rating,correction,reviewer\n"
        "what is 2+2?,5,1,4,ann\n"
        '"what is 2+2?",4,5,,bob\n'
        "say hi,hi,,,carl\n"
    )
    out = tmp_path / "out"
    report = build(out, [], [reviews], BuildOptions(), redact)
    assert report.rows_read["reviews"] == 3 and report.dropped["unrated"] == 1
    assert _labels(_read(out / "unpaired.jsonl")) == {"5": False, "4": True}
    assert [(r["chosen"], r["rejected"]) for r in _read(out / "preference.jsonl")] == [("4", "5")]
    assert report.dropped["duplicate"] == 1  # the correction "4" and bob's rated "4"


def test_the_scrubber_is_the_data_policy_detector() -> None:
    """Feedback is scrubbed by the same detector as spec.dataPolicy.personalData."""
    assert default_scrubber() is redact
    assert default_scrubber()(f"mail {EMAIL}") == ("mail <EMAIL>", Counter(email=1))


def test_cli_prints_counts_never_content(tmp_path: Path) -> None:
    log = _jsonl(
        tmp_path / "log.jsonl",
        [
            {"prompt": f"I am {EMAIL}", "response": "hello", "rating": "negative"},
            {"prompt": f"I am {EMAIL}", "response": "hi", "rating": 5},
        ],
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["feedback", "build", "--feedback", str(log), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert EMAIL not in result.output and "hello" not in result.output
    assert "kept: preference" in result.output and "email" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["kept"] == {"preference": 1, "unpaired": 2}
    assert report["personalData"] == {"policy": "redact", "foundPerKind": {"email": 2}}
    as_json = CliRunner().invoke(
        app, ["feedback", "build", "--feedback", str(log), "--out", str(out), "--json"]
    )
    assert json.loads(as_json.stdout) == report
    none = CliRunner().invoke(app, ["feedback", "build", "--out", str(out)])
    assert none.exit_code == 2
