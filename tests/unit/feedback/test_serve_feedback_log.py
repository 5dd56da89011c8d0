"""`kubetune serve --feedback-log`: feedback bodies with scores and corrections, the log
lines with the prompt and response they rate, bounded memory, rotation, file mode, and
no content in the server's own log. A fake engine; the real aiohttp application."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from kubetune_trainer.serving.app import ModelServer
from kubetune_trainer.serving.feedback_log import Exchange, ExchangeMemory, FeedbackLog
from kubetune_trainer.serving.protocol import BadRequest, Feedback, parse_feedback
from tests.unit.test_serve_app import NAME, FakeEngine, run, scrape, value

SECRET = "my card is 4111 1111 1111 1111"


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"id": "c", "rating": "positive"}, Feedback("c", "positive", None)),
        ({"id": "c", "rating": 5}, Feedback("c", "positive", None, score=5)),
        ({"id": "c", "score": 2}, Feedback("c", "negative", None, score=2)),
        ({"id": "c", "rating": 3}, Feedback("c", None, None, score=3)),
        ({"id": "c", "rating": "negative", "score": 1}, Feedback("c", "negative", None, score=1)),
        ({"id": "c", "correction": "Paris"}, Feedback("c", "negative", None, correction="Paris")),
        (
            {"id": "c", "rating": 4, "correction": "Paris", "model": "m"},
            Feedback("c", "positive", "m", score=4, correction="Paris"),
        ),
    ],
)
def test_feedback_bodies(body: dict[str, Any], expected: Feedback) -> None:
    assert parse_feedback(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        {"id": "c"},
        {"id": "c", "rating": 0},
        {"id": "c", "rating": 6},
        {"id": "c", "score": True},
        {"id": "c", "score": "5"},
        {"id": "c", "rating": 5, "score": 4},
        {"id": "c", "rating": "positive", "score": 1},
        {"id": "c", "correction": "  "},
        {"id": "c", "correction": 5},
        {"id": "c", "correction": "x" * 20_001},
    ],
)
def test_bad_feedback_bodies(body: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        parse_feedback(body)


def test_feedback_is_logged_with_its_prompt_and_response(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log_path = tmp_path / "logs" / "feedback.jsonl"
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": SECRET}]

    async def test(client: TestClient[Any, Any], _server: ModelServer) -> None:
        chat = await (await client.post("/v1/chat/completions", json={"messages": messages})).json()
        plain = await (await client.post("/v1/completions", json={"prompt": "2+2="})).json()
        r1 = await client.post(
            "/v1/feedback", json={"id": chat["id"], "rating": 2, "correction": "no card numbers"}
        )
        assert (await r1.json()) == {
            "id": chat["id"],
            "rating": "negative",
            "model": NAME,
            "known": True,
            "score": 2,
            "logged": True,
        }
        r2 = await client.post("/v1/feedback", json={"id": plain["id"], "rating": 3})
        assert (await r2.json())["rating"] is None and (await r2.json())["logged"] is True
        r3 = await client.post("/v1/feedback", json={"id": plain["id"], "rating": "positive"})
        assert (await r3.json())["logged"] is True
        unknown = await client.post("/v1/feedback", json={"id": "cmpl-x", "rating": "negative"})
        assert (await unknown.json())["logged"] is False
        samples = await scrape(client)
        fb = "kubetune_serve_feedback_total"
        # the neutral 3 is logged but not counted; the unknown id is counted, not logged
        assert value(samples, fb, model_name=NAME, rating="positive") == 1
        assert value(samples, fb, model_name=NAME, rating="negative") == 2

    with caplog.at_level(logging.DEBUG):
        run(test, FakeEngine(" fine answer"), feedback_log=log_path)
    lines = _lines(log_path)
    assert [(x["rating"], x["score"], x["correction"]) for x in lines] == [
        ("negative", 2, "no card numbers"),
        (None, 3, None),
        ("positive", None, None),
    ]
    assert lines[0]["prompt"] == messages and lines[0]["response"] == " fine answer"
    assert lines[1]["prompt"] == "2+2=" and lines[0]["model"] == NAME
    assert {x["v"] for x in lines} == {1} and all(x["time"].endswith("Z") for x in lines)
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
    assert "4111" not in caplog.text


def test_without_a_log_nothing_is_remembered() -> None:
    async def test(client: TestClient[Any, Any], server: ModelServer) -> None:
        done = await (await client.post("/v1/completions", json={"prompt": "x"})).json()
        body = await (
            await client.post("/v1/feedback", json={"id": done["id"], "rating": 4})
        ).json()
        assert "logged" not in body and body["rating"] == "positive"
        assert len(server._exchanges) == 0 and server.feedback_log is None

    run(test)


def test_exchange_memory_is_bounded_by_count_and_characters() -> None:
    memory = ExchangeMemory(max_items=3, max_chars=100)
    for i in range(5):
        memory.add(f"c{i}", Exchange(f"p{i}", "r", "m"))
    assert len(memory) == 3 and memory.get("c1") is None and memory.get("c4") is not None
    memory.add("big", Exchange([{"role": "user", "content": "x" * 90}], "y" * 5, "m"))
    assert len(memory) == 2 and memory.get("c3") is None and memory.get("c4") is not None
    memory.add("huge", Exchange("x" * 101, "", "m"))  # over the whole budget: not kept
    assert memory.get("huge") is None and memory.get("big") is not None


def test_the_log_rotates_and_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "fb.jsonl"
    log = FeedbackLog(path, max_bytes=1024, backups=2)
    line = {"prompt": "x" * 300}
    for _ in range(12):
        assert log.append(line)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["fb.jsonl", "fb.jsonl.1", "fb.jsonl.2"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 1024
        assert all(json.loads(x) == line for x in p.read_text().splitlines())
    assert not log.append({"prompt": "x" * 2000}) and log.skipped == 1
    assert log.written == 12
