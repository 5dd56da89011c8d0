"""The load generator against a fake in-process OpenAI server: rate, concurrency bound,
simulated feedback (to the model that answered), error counting, and the CLI."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from typer.testing import CliRunner

from kubetune.cli.main import app as cli
from kubetune.devcluster.loadgen import (
    LoadReport,
    ResponseRecord,
    is_degenerate,
    load_prompts,
    percentile,
    run_load,
)


@dataclass
class Fake:
    """Answers as model a/b alternately; every ``fail_every``-th request is a 500."""

    delay_s: float = 0.0
    fail_every: int = 0
    empty_every: int = 0
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    arrivals: list[float] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)

    async def completions(self, request: web.Request) -> web.Response:
        self.requests += 1
        n = self.requests
        self.arrivals.append(time.monotonic())
        self.bodies.append(await request.json())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        if self.fail_every and n % self.fail_every == 0:
            return web.json_response({"error": {"message": "boom"}}, status=500)
        text = "" if self.empty_every and n % self.empty_every == 0 else " an answer"
        model = "a" if n % 2 else "b"
        return web.json_response(
            {"id": f"cmpl-{n}", "model": model, "choices": [{"text": text, "index": 0}]}
        )

    async def post_feedback(self, request: web.Request) -> web.Response:
        self.feedback.append(await request.json())
        return web.json_response({"known": True})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/feedback", self.post_feedback)
        return app


async def _serve(fake: Fake, body: Callable[[str], Awaitable[LoadReport]]) -> LoadReport:
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        return await body(f"http://127.0.0.1:{port}/")
    finally:
        await runner.cleanup()


def load(fake: Fake, **kwargs: Any) -> LoadReport:
    return asyncio.run(_serve(fake, lambda url: run_load(url, **kwargs)))


def test_feedback_goes_to_the_answering_model_with_its_completion_id() -> None:
    fake = Fake(empty_every=3)
    seen: list[ResponseRecord] = []
    report = load(fake, rate=200, count=12, satisfied_rate=1.0, on_response=seen.append)
    assert report.sent == 12 and report.succeeded == 12 and report.failed == 0
    assert len(seen) == 12
    by_id = {f["id"]: f for f in fake.feedback}
    assert len(by_id) == 12
    for n in range(1, 13):
        sent = by_id[f"cmpl-{n}"]
        assert sent["model"] == ("a" if n % 2 else "b")
        # satisfied_rate 1: every non-degenerate answer is liked, every empty one is not
        assert sent["rating"] == ("negative" if n % 3 == 0 else "positive")
    a, b = report.models["a"], report.models["b"]
    assert a.responses == b.responses == 6
    assert a.degenerate + b.degenerate == 4
    assert a.positive + b.positive == 8 and a.negative + b.negative == 4
    assert report.feedback_sent == 12 and report.feedback_errors == 0
    assert all(body["max_tokens"] == 16 for body in fake.bodies)


def test_satisfied_rate_zero_rates_everything_negative_and_feedback_can_be_off() -> None:
    fake = Fake()
    load(fake, rate=200, count=6, satisfied_rate=0.0)
    assert {f["rating"] for f in fake.feedback} == {"negative"}
    quiet = Fake()
    report = load(quiet, rate=200, count=6, feedback=False)
    assert quiet.feedback == [] and report.feedback_sent == 0 and report.succeeded == 6


def test_satisfied_rate_is_a_seeded_probability() -> None:
    ratings = []
    for _ in range(2):
        fake = Fake()
        load(fake, rate=1000, count=200, satisfied_rate=0.8, seed=3, concurrency=1)
        ratings.append([f["rating"] for f in sorted(fake.feedback, key=lambda f: f["id"])])
    assert ratings[0] == ratings[1]
    share = ratings[0].count("positive") / 200
    assert 0.7 < share < 0.9


def test_fixed_rate_spaces_requests_and_duration_bounds_the_run() -> None:
    fake = Fake()
    report = load(fake, rate=20, duration_s=0.5, arrival="fixed")
    assert report.sent == 10  # t = 0, 0.05, ..., 0.45
    gaps = [b - a for a, b in zip(fake.arrivals, fake.arrivals[1:], strict=False)]
    assert min(gaps) > 0.03 and 0.04 < sum(gaps) / len(gaps) < 0.07
    assert 0.45 <= report.duration_s < 1.5


def test_poisson_rate_is_near_the_target() -> None:
    fake = Fake()
    report = load(fake, rate=100, count=60, seed=1)
    # 60 exponential gaps of mean 10 ms: ~0.6 s
    assert 0.3 < report.duration_s < 1.5
    assert report.sent == 60


def test_concurrency_is_bounded() -> None:
    fake = Fake(delay_s=0.1)
    report = load(fake, rate=1000, count=9, concurrency=3)
    assert fake.max_in_flight == 3
    assert report.succeeded == 9
    assert report.duration_s >= 0.3  # three waves of 0.1 s


def test_errors_are_counted_by_reason_and_get_no_feedback() -> None:
    fake = Fake(fail_every=3)
    report = load(fake, rate=500, count=9)
    assert report.errors == {"http_500": 3}
    assert report.succeeded == 6 and len(fake.feedback) == 6


def test_unreachable_target_counts_connection_errors() -> None:
    report = asyncio.run(run_load("http://127.0.0.1:9/", rate=100, count=2, timeout_s=2))
    assert report.failed == 2 and report.succeeded == 0


def test_latency_percentiles() -> None:
    fake = Fake(delay_s=0.05)
    report = load(fake, rate=1000, count=4)
    p50 = report.latency_percentile(0.5)
    assert p50 is not None and p50 >= 0.05
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.95) == 4.0
    assert percentile([], 0.5) is None
    summary = report.summary()
    assert summary["latency_s"]["p95"] >= 0.05 and set(summary["models"]) == {"a", "b"}


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        asyncio.run(run_load("http://x", rate=0, count=1))
    with pytest.raises(ValueError):
        asyncio.run(run_load("http://x", rate=1))


def test_prompts_file_and_degenerate_rule(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"text": "b"}\n')
    assert load_prompts(path) == ["a", "b"]
    path.write_text('{"nope": 1}\n')
    with pytest.raises(ValueError):
        load_prompts(path)
    assert is_degenerate("  \n") and not is_degenerate(" x")


def test_cli_prints_json_summary() -> None:
    fake = Fake()
    ready = threading.Event()
    stop: list[Callable[[], object]] = []
    port: list[int] = []

    def serve() -> None:
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(fake.app())
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        port.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        stop.append(lambda: loop.call_soon_threadsafe(loop.stop))
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        result = CliRunner().invoke(
            cli,
            [
                *("dev", "loadgen", f"http://127.0.0.1:{port[0]}"),
                *("--rate", "100", "--count", "4", "--json", "--satisfied-rate", "1"),
            ],
        )
        table = CliRunner().invoke(
            cli, ["dev", "loadgen", f"http://127.0.0.1:{port[0]}", "--rate", "100", "--count", "2"]
        )
    finally:
        stop[0]()
        thread.join(10)
    assert table.exit_code == 0, table.output
    assert "answers" in table.stdout and "sent 2 in" in table.stdout
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["sent"] == 4 and summary["succeeded"] == 4
    assert summary["models"]["a"]["positive"] == 2
    assert len(fake.feedback) == 6  # 4 + 2 of the table run
