"""The model server's HTTP surface with a fake engine: OpenAI shapes, feedback, input
validation, fault injection, queue gauges and the metric names as actually exposed.

No torch here: the engine is a stand-in, the server is the real aiohttp application.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from kubetune_trainer.serving.app import ModelServer, ServeSettings
from kubetune_trainer.serving.faults import FaultInjector, FaultSettings
from kubetune_trainer.serving.protocol import Generation, GenerationRequest

NAME = "candidate-v2"


class FakeEngine:
    """Echoes a fixed answer; optionally blocks until released (to hold the queue)."""

    def __init__(self, text: str = " fine answer", gate: threading.Event | None = None) -> None:
        self.text = text
        self.gate = gate
        self.requests: list[GenerationRequest] = []

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        if messages[0]["role"] == "system" and messages[0]["content"] == "refuse":
            raise ValueError("System role not supported")  # as jinja templates raise
        return "|".join(f"{m['role']}={m['content']}" for m in messages) + "|assistant="

    def generate(self, request: GenerationRequest) -> Generation:
        self.requests.append(request)
        if self.gate is not None:
            assert self.gate.wait(10)
        first = time.monotonic()
        time.sleep(0.01)
        return Generation(
            text=self.text,
            prompt_tokens=len(request.prompt.split()),
            completion_tokens=min(3, request.max_tokens),
            finish_reason="length" if request.max_tokens <= 3 else "stop",
            first_token_at=first,
        )


class SignedScorer:
    """Scores alternate +len(response), -1: the mean needs both halves of the sum."""

    def __init__(self) -> None:
        self.calls = 0

    def score(self, prompt: str, response: str) -> float:
        self.calls += 1
        return float(len(response)) if self.calls % 2 else -1.0


@asynccontextmanager
async def client_for(server: ModelServer) -> AsyncIterator[TestClient[Any, Any]]:
    client: TestClient[Any, Any] = TestClient(TestServer(server.app()))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def run(
    test: Callable[[TestClient[Any, Any], ModelServer], Awaitable[None]],
    engine: FakeEngine | None = None,
    **settings: Any,
) -> ModelServer:
    scorer = settings.pop("scorer", None)
    server = ModelServer(engine or FakeEngine(), ServeSettings(model_name=NAME, **settings), scorer)

    async def main() -> None:
        async with client_for(server) as client:
            await test(client, server)

    asyncio.run(main())
    return server


async def scrape(
    client: TestClient[Any, Any],
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every exposed sample: (name as exposed, sorted labels) -> value."""
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


VLLM = {"model_name": NAME, "engine": "0"}


def test_completion_has_the_openai_shape_and_counts_in_vllm_metrics() -> None:
    async def test(client: TestClient[Any, Any], _server: ModelServer) -> None:
        resp = await client.post(
            "/v1/completions",
            json={"model": "whatever", "prompt": "one two three", "max_tokens": 3, "seed": 7},
        )
        assert resp.status == 200
        body = await resp.json()
        assert body["id"].startswith("cmpl-")
        assert body["object"] == "text_completion"
        assert body["model"] == NAME  # the served name, whatever the request said
        assert body["choices"][0]["text"] == " fine answer"
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
        samples = await scrape(client)
        assert value(samples, "vllm:request_success_total", **VLLM, finished_reason="length") == 1
        assert value(samples, "vllm:request_success_total", **VLLM, finished_reason="stop") == 0
        assert value(samples, "vllm:prompt_tokens_total", **VLLM) == 3
        assert value(samples, "vllm:generation_tokens_total", **VLLM) == 3
        assert value(samples, "vllm:e2e_request_latency_seconds_count", **VLLM) == 1
        assert value(samples, "vllm:e2e_request_latency_seconds_sum", **VLLM) >= 0.01
        assert value(samples, "vllm:time_to_first_token_seconds_count", **VLLM) == 1
        ttft = value(samples, "vllm:time_to_first_token_seconds_sum", **VLLM)
        e2e = value(samples, "vllm:e2e_request_latency_seconds_sum", **VLLM)
        assert 0 <= ttft < e2e
        assert value(samples, "vllm:e2e_request_latency_seconds_bucket", **VLLM, le="+Inf") == 1
        assert value(samples, "vllm:num_requests_running", **VLLM) == 0
        assert value(samples, "vllm:num_requests_waiting", **VLLM) == 0
        names = {name for name, _ in samples}
        assert not any(n.endswith("_created") for n in names)

    engine = FakeEngine()
    run(test, engine)
    assert engine.requests[0].seed == 7 and not engine.requests[0].chat


def test_every_metric_carries_the_served_model_name() -> None:
    async def test(client: TestClient[Any, Any], _server: ModelServer) -> None:
        await client.post("/v1/completions", json={"prompt": "x"})
        samples = await scrape(client)
        for name, labels in samples:
            assert dict(labels).get("model_name") == NAME, name
        names = {name for name, _ in samples}
        assert {
            "kubetune_serve_request_errors_total",
            "kubetune_serve_feedback_total",
            "kubetune_serve_reward_score_count",
            "kubetune_serve_reward_score_squared_total",
        } <= names

    run(test)


def test_chat_renders_the_messages_and_answers_as_the_assistant() -> None:
    async def test(client: TestClient[Any, Any], _server: ModelServer) -> None:
        resp = await client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
        )
        body = await resp.json()
        assert resp.status == 200, body
        assert body["id"].startswith("chatcmpl-")
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"] == {"role": "assistant", "content": " fine answer"}
        assert body["choices"][0]["finish_reason"] == "stop"

    engine = FakeEngine()
    run(test, engine)
    assert engine.requests[0].prompt == "user=hi|assistant="
    assert engine.requests[0].chat


def test_models_and_health() -> None:
    async def test(client: TestClient[Any, Any], _server: ModelServer) -> None:
        models = await (await client.get("/v1/models")).json()
        assert [m["id"] for m in models["data"]] == [NAME]
        health = await client.get("/health")
        assert health.status == 200

    run(test)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", b"not json"),
        ("/v1/completions", b"[1, 2]"),
        ("/v1/completions", b"{}"),
        ("/v1/completions", b'{"prompt": 5}'),
        ("/v1/completions", b'{"prompt": "x", "max_tokens": 0}'),
        ("/v1/completions", b'{"prompt": "x", "max_tokens": "9"}'),
        ("/v1/completions", b'{"prompt": "x", "temperature": -1}'),
        ("/v1/completions", b'{"prompt": "x", "stream": true}'),
        ("/v1/completions", b'{"prompt": "x", "stop": [""]}'),
        ("/v1/chat/completions", b'{"messages": []}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "robot", "content": "x"}]}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user"}]}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "system", "content": "refuse"}]}'),
        ("/v1/feedback", b'{"id": "cmpl-1", "rating": "great"}'),
        ("/v1/feedback", b'{"rating": "positive"}'),
        ("/v1/feedback", b'{"id": "", "rating": "positive"}'),
        ("/v1/feedback", b'{"id": "cmpl-1", "rating": "positive", "model": ""}'),
        ("/v1/feedback", b'{"id": "cmpl-1", "rating": "positive", "model": "a b"}'),
        ("/v1/feedback", b'{"id": "cmpl-1", "rating": "positive", "model": "' + b"m" * 200 + b'"}'),
    ],
)
def test_bad_input_is_a_400_with_a_message(path: str, body: bytes) -> None:
    async def test(client: TestClient[Any, Any], _server: ModelServer) -> None:
        resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
        assert resp.status == 400
        payload = await resp.json()
        assert payload["error"]["code"] == 400 and payload["error"]["message"]
        samples = await scrape(client)
        assert (
            value(
                samples,
                "kubetune_serve_request_errors_total",
                model_name=NAME,
                reason="bad_request",
            )
            == 1
        )
        assert value(samples, "vllm:request_success_total", **VLLM, finished_reason="stop") == 0

    engine = FakeEngine()
    run(test, engine)
    assert engine.requests == []


def test_feedback_is_counted_under_the_model_that_answered() -> None:
    async def test(client: TestClient[Any, Any], _server: ModelServer) -> None:
        done = await (await client.post("/v1/completions", json={"prompt": "x"})).json()
        known = await client.post("/v1/feedback", json={"id": done["id"], "rating": "positive"})
        assert (await known.json()) == {
            "id": done["id"],
            "rating": "positive",
            "model": NAME,
            "known": True,
        }
        unknown = await client.post("/v1/feedback", json={"id": "cmpl-nope", "rating": "negative"})
        body = await unknown.json()
        assert (
            unknown.status == 200 and body["known"] is False and "did not issue" in body["message"]
        )
        # Routed to the wrong backend: counted under the model the body names.
        other = await client.post(
            "/v1/feedback", json={"id": "cmpl-x", "rating": "negative", "model": "baseline"}
        )
        assert (await other.json())["model"] == "baseline"
        samples = await scrape(client)
        fb = "kubetune_serve_feedback_total"
        assert value(samples, fb, model_name=NAME, rating="positive") == 1
        assert value(samples, fb, model_name=NAME, rating="negative") == 1
        assert value(samples, fb, model_name="baseline", rating="negative") == 1

    run(test)


def test_injected_errors_are_500s_counted_as_errors_not_successes() -> None:
    async def test(client: TestClient[Any, Any], _server: ModelServer) -> None:
        for _ in range(3):
            resp = await client.post("/v1/completions", json={"prompt": "x"})
            assert resp.status == 500
            assert "injected" in (await resp.json())["error"]["message"]
        samples = await scrape(client)
        errors = "kubetune_serve_request_errors_total"
        assert value(samples, errors, model_name=NAME, reason="injected") == 3
        assert value(samples, "vllm:e2e_request_latency_seconds_count", **VLLM) == 0

    engine = FakeEngine()
    run(test, engine, faults=FaultSettings(error_rate=1.0))
    assert engine.requests == []


def test_injected_latency_and_degenerate_answers() -> None:
    async def test(client: TestClient[Any, Any], _server: ModelServer) -> None:
        started = time.monotonic()
        resp = await client.post("/v1/completions", json={"prompt": "x"})
        assert time.monotonic() - started >= 0.3
        body = await resp.json()
        assert body["choices"][0]["text"] == "" and body["choices"][0]["finish_reason"] == "stop"
        samples = await scrape(client)
        assert value(samples, "vllm:e2e_request_latency_seconds_sum", **VLLM) >= 0.3
        assert value(samples, "vllm:time_to_first_token_seconds_sum", **VLLM) >= 0.3
        assert value(samples, "vllm:e2e_request_latency_seconds_bucket", **VLLM, le="0.2") == 0

    run(test, faults=FaultSettings(latency_s=0.3, degenerate_rate=1.0))


def test_fault_decisions_are_seeded_and_near_their_rate() -> None:
    def draws(seed: int) -> list[tuple[bool, bool]]:
        inj = FaultInjector(FaultSettings(error_rate=0.3, degenerate_rate=0.5, seed=seed))
        return [(d.fail, d.degenerate) for d in (inj.decide() for _ in range(2000))]

    assert draws(1) == draws(1) != draws(2)
    fails = sum(f for f, _ in draws(1)) / 2000
    assert 0.25 < fails < 0.35
    with pytest.raises(ValueError):
        FaultSettings(error_rate=1.5)


def test_queue_gauges_health_during_generation_and_overload_503() -> None:
    gate = threading.Event()

    async def test(client: TestClient[Any, Any], _server: ModelServer) -> None:
        sent = [
            asyncio.create_task(client.post("/v1/completions", json={"prompt": "x"}))
            for _ in range(3)
        ]
        for _ in range(200):
            samples = await scrape(client)
            if value(samples, "vllm:num_requests_waiting", **VLLM) == 2:
                break
            await asyncio.sleep(0.01)
        assert value(samples, "vllm:num_requests_running", **VLLM) == 1
        assert value(samples, "vllm:num_requests_waiting", **VLLM) == 2
        assert (await client.get("/health")).status == 200  # the loop is not blocked
        refused = await client.post("/v1/completions", json={"prompt": "x"})
        assert refused.status == 503
        gate.set()
        assert [r.status for r in await asyncio.gather(*sent)] == [200, 200, 200]
        samples = await scrape(client)
        assert value(samples, "vllm:num_requests_running", **VLLM) == 0
        assert value(samples, "vllm:num_requests_waiting", **VLLM) == 0
        errors = "kubetune_serve_request_errors_total"
        assert value(samples, errors, model_name=NAME, reason="overloaded") == 1

    run(test, FakeEngine(gate=gate), max_waiting=2)


def test_sampled_responses_are_scored_with_sums_for_mean_and_variance() -> None:
    async def test(client: TestClient[Any, Any], server: ModelServer) -> None:
        for _ in range(4):
            assert (await client.post("/v1/completions", json={"prompt": "x"})).status == 200
        await server.drain()
        samples = await scrape(client)
        n = len(" fine answer")  # scores: n, -1, n, -1
        assert value(samples, "kubetune_serve_reward_score_count", model_name=NAME) == 4
        assert (
            value(samples, "kubetune_serve_reward_score_positive_total", model_name=NAME) == 2 * n
        )
        assert value(samples, "kubetune_serve_reward_score_negative_total", model_name=NAME) == 2
        squared = "kubetune_serve_reward_score_squared_total"
        assert value(samples, squared, model_name=NAME) == 2 * n * n + 2
        assert value(samples, "kubetune_serve_reward_score_bucket", model_name=NAME, le="0.0") == 2

    run(test, reward_sample_rate=1.0, scorer=SignedScorer())


def test_reward_sampling_follows_the_rate() -> None:
    async def test(client: TestClient[Any, Any], server: ModelServer) -> None:
        for _ in range(40):
            assert (await client.post("/v1/completions", json={"prompt": "x"})).status == 200
        await server.drain()
        samples = await scrape(client)
        scored = value(samples, "kubetune_serve_reward_score_count", model_name=NAME)
        assert 5 <= scored <= 35

    run(test, reward_sample_rate=0.5, scorer=SignedScorer())


def test_load_generator_feedback_is_counted_by_the_server() -> None:
    """The loadgen/server contract: ids and model names round-trip, degenerate answers
    (injected) are rated negative by the simulated users."""
    from kubetune.devcluster.loadgen import run_load

    async def test(client: TestClient[Any, Any], _server: ModelServer) -> None:
        url = str(client.make_url("/"))
        report = await run_load(url, rate=500, count=6, satisfied_rate=1.0)
        assert report.models[NAME].responses == 6 and report.models[NAME].negative == 6
        samples = await scrape(client)
        fb = "kubetune_serve_feedback_total"
        assert value(samples, fb, model_name=NAME, rating="negative") == 6
        assert value(samples, fb, model_name=NAME, rating="positive") == 0

    run(test, faults=FaultSettings(degenerate_rate=1.0))
