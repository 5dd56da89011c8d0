"""The rollout's PromQL client against a tiny fake Prometheus HTTP API (aiohttp)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from kubetune_operator.rollout.prometheus import PrometheusError, PrometheusHttpClient

Answer = Callable[[dict[str, str]], Awaitable[web.Response]]


def vector(*values: str) -> dict[str, Any]:
    result = [
        {"metric": {"model_name": f"m{i}"}, "value": [1700000000.0, v]}
        for i, v in enumerate(values)
    ]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def ok(doc: dict[str, Any]) -> Answer:
    async def answer(form: dict[str, str]) -> web.Response:
        return web.json_response(doc)

    return answer


class FakePrometheus:
    """Answers /api/v1/query with ``answer``; records every request's form and method."""

    def __init__(self, answer: Answer, *, post: bool = True) -> None:
        self.answer = answer
        self.post = post
        self.seen: list[tuple[str, dict[str, str]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        if request.method == "POST" and not self.post:
            return web.Response(status=405, text="method not allowed")
        form = dict(await request.post()) if request.method == "POST" else dict(request.query)
        params = {k: str(v) for k, v in form.items()}
        self.seen.append((request.method, params))
        return await self.answer(params)


async def with_server(
    fake: FakePrometheus, fn: Callable[[PrometheusHttpClient], Awaitable[Any]], timeout: float = 5
) -> Any:
    app = web.Application()
    app.router.add_route("*", "/api/v1/query", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with PrometheusHttpClient(f"http://127.0.0.1:{port}/", timeout=timeout) as client:
            return await fn(client)
    finally:
        await runner.cleanup()


def query(answer: Answer, promql: str = "up", **kwargs: Any) -> Any:
    fake = FakePrometheus(answer)
    return asyncio.run(with_server(fake, lambda c: c.query(promql), **kwargs))


def test_one_sample_is_its_value_and_the_query_is_posted() -> None:
    fake = FakePrometheus(ok(vector("0.25")))
    at = datetime(2026, 1, 1, tzinfo=UTC)
    value = asyncio.run(with_server(fake, lambda c: c.query('sum(x{a="b"})', at)))
    assert value == 0.25
    method, form = fake.seen[0]
    assert method == "POST"
    assert form["query"] == 'sum(x{a="b"})'
    assert float(form["time"]) == at.timestamp()
    assert form["timeout"] == "5s"


def test_empty_vector_is_no_data() -> None:
    assert query(ok(vector())) is None


@pytest.mark.parametrize("raw", ["NaN", "+Inf", "-Inf"])
def test_nan_and_infinities_are_no_data(raw: str) -> None:
    assert query(ok(vector(raw))) is None


def test_several_series_are_an_error_suggesting_sum() -> None:
    with pytest.raises(PrometheusError) as err:
        query(ok(vector("1", "2", "3", "4")))
    text = str(err.value)
    assert "one series" in text and "returned 4" in text and "sum(" in text
    assert 'model_name="m0"' in text and "1 more" in text


def test_scalar_result() -> None:
    doc = {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "42"]}}
    assert query(ok(doc)) == 42.0


def test_range_vector_is_refused() -> None:
    doc = {"status": "success", "data": {"resultType": "matrix", "result": []}}
    with pytest.raises(PrometheusError, match="range vector"):
        query(ok(doc))


def test_bad_query_carries_prometheus_error_text() -> None:
    async def answer(form: dict[str, str]) -> web.Response:
        body = {
            "status": "error",
            "errorType": "bad_data",
            "error": 'invalid parameter "query": 1:5: parse error: unexpected ")"',
        }
        return web.json_response(body, status=400)

    with pytest.raises(PrometheusError) as err:
        query(answer, "sum(x))")
    assert "bad_data" in str(err.value)
    assert 'parse error: unexpected ")"' in str(err.value)
    assert "HTTP 400" in str(err.value)


def test_non_json_error_is_quoted() -> None:
    async def answer(form: dict[str, str]) -> web.Response:
        return web.Response(status=502, text="<html>bad gateway</html>")

    with pytest.raises(PrometheusError, match=r"HTTP 502.*bad gateway"):
        query(answer)


def test_timeout() -> None:
    async def answer(form: dict[str, str]) -> web.Response:
        await asyncio.sleep(1.5)
        return web.json_response(vector("1"))

    with pytest.raises(PrometheusError, match=r"timed out after 0\.3s"):
        query(answer, timeout=0.3)


def test_unreachable() -> None:
    async def scenario() -> None:
        async with PrometheusHttpClient("http://127.0.0.1:9", timeout=2) as client:
            await client.query("up")

    with pytest.raises(PrometheusError, match="cannot reach Prometheus"):
        asyncio.run(scenario())


def test_falls_back_to_get_when_post_is_refused() -> None:
    fake = FakePrometheus(ok(vector("7")), post=False)

    async def twice(client: PrometheusHttpClient) -> list[float | None]:
        return [await client.query("a"), await client.query("b")]

    assert asyncio.run(with_server(fake, twice)) == [7.0, 7.0]
    assert [(m, f["query"]) for m, f in fake.seen] == [("GET", "a"), ("GET", "b")]
