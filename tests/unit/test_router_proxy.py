"""The router as a proxy, against a fake API server: forwarding, status codes for the spec's
failure cases, metrics, and how fast route changes are followed (watch, then poll)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from kubetune.devcluster.procs import free_port
from kubetune.devcluster.router import BACKEND_HEADER, WeightedRouter

NS = "serving"
NAME = web.AppKey("name", str)
ROUTE_PATH = f"/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes/chat"


class FakeKube:
    """GETs answered from ``objects``; every watch yields one event at its start and one per
    :meth:`touch` (none when ``watches`` is False)."""

    def __init__(self, *, watches: bool = True) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.watches = watches
        self._queues: list[asyncio.Queue[dict[str, Any]]] = []

    async def get(self, path: str, **params: str) -> dict[str, Any] | None:
        if path.endswith("/endpointslices"):
            name = params["labelSelector"].split("=", 1)[1]
            return {"items": [o for p, o in self.objects.items() if p.endswith(f"/slices/{name}")]}
        if path.endswith("/referencegrants"):
            return {"items": []}
        return self.objects.get(path)

    async def watch(self, path: str, **params: str) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._queues.append(queue)
        # a watch without resourceVersion starts with the existing objects, as ADDED events
        queue.put_nowait({"type": "ADDED", "object": {}})
        while True:
            event = await queue.get()
            if self.watches:
                yield event

    def touch(self) -> None:
        for q in self._queues:
            q.put_nowait({"type": "MODIFIED", "object": {}})

    async def close(self) -> None:
        pass

    def backend(self, name: str, port: int) -> None:
        self.objects[f"/api/v1/namespaces/{NS}/services/{name}"] = {
            "spec": {"ports": [{"name": "http", "port": 80}]}
        }
        self.objects[f"/slices/{name}"] = {
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
        }

    def route(self, generation: int, **weights: int) -> None:
        refs = [{"name": n, "port": 80, "weight": w} for n, w in weights.items()]
        self.objects[ROUTE_PATH] = {
            "metadata": {"name": "chat", "namespace": NS, "generation": generation},
            "spec": {"rules": [{"backendRefs": refs}]},
        }


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    if request.path == "/slow":
        await asyncio.sleep(0.5)
    return web.json_response(
        {
            "name": request.app[NAME],
            "method": request.method,
            "path_qs": request.rel_url.raw_path_qs,
            "body": body.decode(),
            "x_test": request.headers.get("X-Test"),
            "xff": request.headers.get("X-Forwarded-For"),
        },
        headers={"X-From": request.app[NAME]},
    )


async def start_echo(name: str) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app[NAME] = name
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


Scenario = Callable[[FakeKube, WeightedRouter, aiohttp.ClientSession], Awaitable[None]]


def run(scenario: Scenario, *, watches: bool = True, poll: float = 30.0, **weights: int) -> None:
    async def main() -> None:
        kube = FakeKube(watches=watches)
        runners = []
        for name in ("base", "canary"):
            runner, port = await start_echo(name)
            runners.append(runner)
            kube.backend(name, port)
        kube.route(1, **(weights or {"base": 1}))
        router = WeightedRouter(
            NS,
            "chat",
            kube=kube,
            poll_interval=poll,
            rng=random.Random(3),
        )
        try:
            async with router, aiohttp.ClientSession() as http:
                await scenario(kube, router, http)
        finally:
            for r in runners:
                await r.cleanup()

    asyncio.run(asyncio.wait_for(main(), 30))


async def split(router: WeightedRouter, http: aiohttp.ClientSession, n: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _ in range(n):
        async with http.get(router.url + "/v1/chat") as resp:
            name = (await resp.json())["name"] if resp.status == 200 else str(resp.status)
            counts[name] = counts.get(name, 0) + 1
    return counts


def test_forwards_the_request_and_the_response() -> None:
    async def scenario(kube: FakeKube, router: WeightedRouter, http: aiohttp.ClientSession) -> None:
        url = URL(router.url + "/v1/chat/completions?stream=false&x=%2F", encoded=True)
        async with http.post(url, data=b'{"p": 1}', headers={"X-Test": "t"}) as resp:
            assert resp.status == 200
            got = await resp.json()
            assert resp.headers["X-From"] == "base"
            assert resp.headers[BACKEND_HEADER] == f"{NS}/base:80"
        assert got["method"] == "POST"
        assert got["path_qs"] == "/v1/chat/completions?stream=false&x=%2F"
        assert got["body"] == '{"p": 1}'
        assert got["x_test"] == "t"
        assert got["xff"] == "127.0.0.1"
        async with http.get(router.metrics_url + "/metrics") as resp:
            text = await resp.text()
        line = (
            f'kubetune_router_requests_total{{backend="{NS}/base:80",code="200",'
            f'route="{NS}/chat"}} 1.0'
        )
        assert line in text
        assert f'kubetune_router_route_generation{{route="{NS}/chat"}} 1.0' in text
        async with http.get(router.metrics_url + "/state") as resp:
            state = await resp.json()
        assert state["rules"][0]["backends"][1]["weight"] == 0

    run(scenario, base=1, canary=0)


def test_watch_applies_weight_changes_at_once() -> None:
    async def scenario(kube: FakeKube, router: WeightedRouter, http: aiohttp.ClientSession) -> None:
        assert await split(router, http, 20) == {"base": 20}
        kube.route(2, base=0, canary=1)
        t0 = time.monotonic()
        kube.touch()
        await router.wait_generation(2, timeout=2)
        assert time.monotonic() - t0 < 1.0  # the poll (30 s) could not have done it
        assert await split(router, http, 20) == {"canary": 20}
        kube.route(3, base=1, canary=1)
        kube.touch()
        await router.wait_generation(3, timeout=2)
        counts = await split(router, http, 200)
        assert 60 < counts["base"] < 140 and counts["base"] + counts["canary"] == 200, counts

    run(scenario, base=100, canary=0)


def test_poll_applies_changes_when_watches_are_silent() -> None:
    async def scenario(kube: FakeKube, router: WeightedRouter, http: aiohttp.ClientSession) -> None:
        kube.route(2, base=0, canary=5)
        kube.touch()  # swallowed: only the poll sees the change
        await router.wait_generation(2, timeout=2)
        assert await split(router, http, 10) == {"canary": 10}

    run(scenario, watches=False, poll=0.2, base=1)


def test_failure_statuses() -> None:
    async def scenario(kube: FakeKube, router: WeightedRouter, http: aiohttp.ClientSession) -> None:
        async def status_after(generation: int, path: str = "/") -> int:
            kube.touch()
            await router.wait_generation(generation, timeout=2)
            async with http.get(router.url + path) as resp:
                return resp.status

        kube.route(2, base=0, canary=0)
        assert await status_after(2) == 500  # every weight 0
        kube.route(3, missing=1)
        assert await status_after(3) == 500  # no such Service
        kube.objects["/slices/base"]["endpoints"] = []
        kube.route(4, base=1)
        assert await status_after(4) == 503  # no ready endpoint
        kube.backend("base", free_port())  # nothing listens there
        kube.route(5, base=1)
        assert await status_after(5) == 502
        del kube.objects[ROUTE_PATH]
        kube.touch()
        await asyncio.sleep(0.3)
        assert router.table.generation is None
        async with http.get(router.url + "/") as resp:
            assert resp.status == 404
        async with http.get(router.metrics_url + "/metrics") as resp:
            text = await resp.text()
        errors = [ln for ln in text.splitlines() if ln.startswith("kubetune_router_upstream_err")]
        assert any('reason="connect"' in ln and ln.endswith(" 1.0") for ln in errors), errors
        assert 'code="502"' in text and 'code="503"' in text

    run(scenario, base=1)


def test_a_client_that_goes_away_is_counted_not_logged_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A load generator stopping mid-request is the client's doing (nginx's 499), not an
    upstream error, and no traceback in the router's log."""

    async def scenario(kube: FakeKube, router: WeightedRouter, http: aiohttp.ClientSession) -> None:
        for _ in range(3):
            with pytest.raises(TimeoutError):
                async with http.get(
                    router.url + "/slow", timeout=aiohttp.ClientTimeout(total=0.1)
                ) as resp:
                    await resp.read()
        await asyncio.sleep(0.8)  # the upstream answers after 0.5 s, to nobody
        async with http.get(router.metrics_url + "/metrics") as resp:
            text = await resp.text()
        line = (
            f'kubetune_router_requests_total{{backend="{NS}/base:80",code="499",'
            f'route="{NS}/chat"}} 3.0'
        )
        assert line in text, [ln for ln in text.splitlines() if "requests_total{" in ln]
        assert "kubetune_router_upstream_errors_total{" not in text

    with caplog.at_level(logging.ERROR, logger="aiohttp.server"):
        run(scenario, base=1)
    assert not [r for r in caplog.records if r.name == "aiohttp.server"], caplog.text
