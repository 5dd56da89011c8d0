"""The progress poller treats rank 0's progress document as untrusted input (issue 9, 1),
and an unreadable document means "progress unknown", never "no progress" (issue 9, 2).

HTTP behaviour is checked against real local servers (aiohttp on 127.0.0.1); stall
decisions through the in-memory cluster of conftest.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import generate_latest

from kubetune.api.status import FineTuneJobStatus
from kubetune_operator import naming
from kubetune_operator.controller import Controller
from kubetune_operator.kube import ApiError, KubeClient
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.observed import Observed, PodView, ProgressSample
from kubetune_operator.plan import DeletePod, Plan
from kubetune_operator.progress import (
    MAX_API_INT,
    MAX_BODY_BYTES,
    ProgressError,
    fetch_document,
    map_progress,
    new_session,
)
from kubetune_operator.settings import OperatorSettings

GOOD = {"state": "training", "step": 7, "totalSteps": 70}


# -- local HTTP servers ------------------------------------------------------------------------
class Server:
    """A local aiohttp server; ``hits`` counts every request it received."""

    def __init__(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        self.handler = handler
        self.hits = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        return await self.handler(request)

    async def __aenter__(self) -> Server:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    def url(self, path: str = "/progress") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def body_of(text: str | bytes, **headers: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(_: web.Request) -> web.Response:
        data = text.encode() if isinstance(text, str) else text
        return web.Response(body=data, headers={"Content-Type": "application/json", **headers})

    return handler


async def fetch(url: str, timeout: float = 2.0) -> dict[str, Any]:
    async with new_session() as session:
        return await fetch_document(session, url, timeout)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


# -- the fetch: size, time, redirects, validation ----------------------------------------------
def test_a_40_mb_body_is_refused_without_reading_it() -> None:
    sent = {"bytes": 0}

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()  # no Content-Length: the limit must hold while reading
        await resp.prepare(request)
        chunk = b"[" * (1024 * 1024)
        try:
            for _ in range(40):
                await resp.write(chunk)
                sent["bytes"] += len(chunk)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def declared(_: web.Request) -> web.Response:
        return web.Response(body=b" " * (40 * 1024 * 1024))

    async def scenario() -> None:
        async with Server(stream) as server:
            started = time.monotonic()
            with pytest.raises(ProgressError) as err:
                await fetch(server.url(), timeout=30)
            assert err.value.kind == ProgressError.TOO_LARGE
            assert time.monotonic() - started < 10
        async with Server(declared) as server:
            with pytest.raises(ProgressError) as err:
                await fetch(server.url(), timeout=30)
            assert err.value.kind == ProgressError.TOO_LARGE
        # A document just under the limit is still fine.
        padded = json.dumps({**GOOD, "message": "x" * (MAX_BODY_BYTES - 200)})
        async with Server(body_of(padded)) as server:
            assert (await fetch(server.url()))["step"] == 7

    run(scenario())


def test_a_redirect_is_not_followed() -> None:
    async def scenario() -> None:
        async with Server(body_of(json.dumps(GOOD))) as elsewhere:

            async def redirect(_: web.Request) -> web.Response:
                raise web.HTTPFound(elsewhere.url("/steal"))

            async with Server(redirect) as pod:
                with pytest.raises(ProgressError) as err:
                    await fetch(pod.url())
                assert err.value.kind == ProgressError.REDIRECT
                assert pod.hits == 1
            assert elsewhere.hits == 0, "the operator must not send requests where a pod says"

    run(scenario())


def test_slow_drip_is_bounded_by_the_timeout() -> None:
    async def drip(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            for _ in range(100):
                await resp.write(b" ")
                await asyncio.sleep(0.1)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def scenario() -> None:
        async with Server(drip) as server:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await fetch(server.url(), timeout=0.5)
            assert time.monotonic() - started < 3

    run(scenario())


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2, 3]",
        b'{"step": -5, "totalSteps": 10}',
        b'{"step": "many"}',
        b'{"state": "hacking", "step": 1}',
        b"[" * 50_000,  # nesting bomb
    ],
    ids=["garbage", "not-an-object", "negative-step", "string-step", "bad-state", "nesting"],
)
def test_invalid_documents_are_refused(body: bytes) -> None:
    async def scenario() -> None:
        async with Server(body_of(body)) as server:
            with pytest.raises(ProgressError) as err:
                await fetch(server.url())
            assert err.value.kind == ProgressError.INVALID

    run(scenario())


def test_compressed_bodies_are_refused() -> None:
    import gzip

    packed = gzip.compress(json.dumps(GOOD).encode())

    async def scenario() -> None:
        async with Server(body_of(packed, **{"Content-Encoding": "gzip"})) as server:
            with pytest.raises(ProgressError) as err:
                await fetch(server.url())
            assert err.value.kind == ProgressError.INVALID

    run(scenario())


def test_huge_and_non_finite_numbers_are_clamped_or_dropped() -> None:
    async def scenario() -> dict[str, Any]:
        text = (
            '{"state": "training", "step": 100000000000000000000000000000, '
            '"totalSteps": 100000000000000000000000000000000, "etaSeconds": 1e300, '
            '"loss": NaN, "evalLoss": Infinity, "epoch": Infinity, "tokensPerSecond": 1e308, '
            '"lastCheckpointStep": 100000000000000000000000000000, '
            '"lastCheckpointPath": "' + "p" * 5000 + '"}'
        )
        async with Server(body_of(text)) as server:
            return await fetch(server.url())

    document = run(scenario())
    progress, checkpoint = map_progress(ProgressSample(document, datetime.now(UTC), 1), None, None)
    assert progress is not None and checkpoint is not None
    assert progress.eta_seconds == MAX_API_INT
    assert progress.step == MAX_API_INT and progress.total_steps == MAX_API_INT
    assert progress.loss is None and progress.eval_loss is None and progress.epoch == 0.0
    assert checkpoint.step == MAX_API_INT and len(checkpoint.path) == 2048
    status = FineTuneJobStatus(progress=progress, last_checkpoint=checkpoint)
    json.dumps(status.model_dump(mode="json"), allow_nan=False)  # no NaN/Infinity on the wire


def test_decide_writes_only_storable_numbers(make_cluster: Any) -> None:
    """The operator's status must pass the API server's int64/finite checks whatever rank 0
    says (a 301-digit etaSeconds made every later status write of the job fail)."""
    c = make_cluster()
    c.start_running()
    c.progress = ProgressSample(
        {
            "step": 10**30,
            "totalSteps": 10**31,
            "etaSeconds": 1e300,
            "loss": float("nan"),
            "tokensPerSecond": float("inf"),
            "lastCheckpointStep": -3,  # invalid for status.lastCheckpoint: ignored, no crash
            "lastCheckpointPath": "/x",
        },
        c.now,
        attempt=1,
    )
    c.step()
    text = json.dumps(c.status, allow_nan=False)

    def ints(value: Any) -> list[int]:
        if isinstance(value, bool):
            return []
        if isinstance(value, int):
            return [value]
        if isinstance(value, dict):
            return [i for v in value.values() for i in ints(v)]
        if isinstance(value, list):
            return [i for v in value for i in ints(v)]
        return []

    assert all(-(2**63) <= i < 2**63 for i in ints(json.loads(text)))
    assert c.status["progress"]["etaSeconds"] == MAX_API_INT
    assert "lastCheckpoint" not in c.status
    assert c.condition("ProgressKnown")["status"] == "True"


# -- the controller: errors become samples, condition and metric --------------------------------
def controller(**settings: Any) -> Controller:
    values: dict[str, Any] = {"leader_election": False, "identity": "t", **settings}
    return Controller(object(), OperatorSettings(**values), OperatorMetrics())  # type: ignore[arg-type]


def metric(c: Controller, line: str) -> float:
    for row in generate_latest(c.metrics.registry).decode().splitlines():
        if row.startswith(line + " "):
            return float(row.rsplit(" ", 1)[1])
    return 0.0


def test_failed_reads_are_recorded_as_errors_and_counted() -> None:
    async def scenario() -> None:
        c = controller()
        key = ("ns", "j")
        async with Server(body_of(json.dumps(GOOD))) as good:
            await c._fetch(key, good.url(), 1)
        first = c._progress[key]
        assert first.error is None and first.document["step"] == 7
        async with Server(body_of(b'{"step": -1}')) as bad:
            await c._fetch(key, bad.url(), 1)
        sample = c._progress[key]
        assert sample.error is not None and sample.error.startswith("invalid progress document")
        assert sample.document == first.document, "the last good document is kept"
        assert sample.fetched_at == first.fetched_at, "a failed read is no evidence"
        await c._fetch(key, "http://127.0.0.1:1/progress", 1)  # nothing listens there
        assert "GET http://127.0.0.1:1/progress" in (c._progress[key].error or "")
        assert metric(c, 'kubetune_progress_scrape_failures_total{reason="invalid"}') == 1
        assert metric(c, 'kubetune_progress_scrape_failures_total{reason="unreachable"}') == 1
        await c.stop()

    run(scenario())


def test_unchanged_document_refreshes_evidence_without_requeue() -> None:
    async def scenario() -> None:
        c = controller()
        key = ("ns", "j")
        async with Server(body_of(json.dumps(GOOD))) as server:
            await c._fetch(key, server.url(), 1)
            first = c._progress[key]
            assert len(c.queue) == 1
            await c.queue.get()
            c.queue.done(key)
            await asyncio.sleep(0.01)
            await c._fetch(key, server.url(), 1)
        again = c._progress[key]
        assert again.fetched_at > first.fetched_at, "each good read is fresh evidence"
        assert len(c.queue) == 0, "an unchanged document needs no reconcile"
        await c.stop()

    run(scenario())


def test_progress_is_read_only_from_rank_0_of_the_current_attempt() -> None:
    docs = {
        "10.0.0.1": {**GOOD, "step": 1},  # rank 1
        "10.0.0.2": {**GOOD, "step": 42},  # rank 0, attempt 2
        "10.0.0.3": {**GOOD, "step": 3},  # rank 0 of attempt 1 (old gang, still terminating)
        "10.0.0.4": {**GOOD, "step": 4},  # rank 0 of another job's gang
    }
    hits: list[str] = []

    async def by_ip(request: web.Request) -> web.Response:
        ip = request.path.strip("/").split("/")[0]
        hits.append(ip)
        return web.json_response(docs[ip])

    def pod(name: str, ip: str, rank: int, attempt: int, owner: str = "uid-j") -> PodView:
        return PodView(
            name=name,
            uid=f"u-{name}",
            job="j",
            role=naming.ROLE_WORKER,
            owner_uid=owner,
            attempt=attempt,
            rank=rank,
            phase="Running",
            pod_ip=ip,
        )

    async def scenario() -> None:
        async with Server(by_ip) as server:
            c = controller(progress_url_template=f"http://127.0.0.1:{server.port}/{{pod_ip}}/p")
            key = ("ns", "j")
            job = {
                "metadata": {"name": "j", "namespace": "ns", "uid": "uid-j"},
                "status": {"phase": "Running", "attempts": 2, "gpus": 16},
            }
            c.cache.jobs = {key: [job]}
            c.cache.pods = {
                key: [
                    # listed (sorted by name) first: only its rank label keeps it out
                    pod("a-rank1", "10.0.0.1", 1, 2),
                    pod("j-a2-0", "10.0.0.2", 0, 2),
                    pod("j-a1-0", "10.0.0.3", 0, 1),
                    pod("x-a2-0", "10.0.0.4", 0, 2, owner="uid-other"),
                ]
            }
            await c.poll_once()
            await c.stop()
        assert hits == ["10.0.0.2"]
        sample = c._progress[key]
        assert sample.document["step"] == 42 and sample.attempt == 2

    run(scenario())


# -- status writes: one refused write does not wedge the job or the queue -----------------------
class RefusingClient:
    """Refuses (422) any status patch that carries progress, like the API server refusing
    an out-of-range number; records every call."""

    path = staticmethod(KubeClient.path)

    def __init__(self, refuse_all: bool = False) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.refuse_all = refuse_all

    async def patch(self, path: str, body: dict[str, Any], *_: Any) -> dict[str, Any]:
        self.calls.append(("PATCH", path, body))
        if self.refuse_all or "progress" in body.get("status", {}):
            raise ApiError(422, "Invalid", "status.progress.etaSeconds: Invalid value")
        return {"metadata": {"name": "j", "resourceVersion": "9"}, "status": body["status"]}

    async def delete(self, path: str, **_: Any) -> dict[str, Any]:
        self.calls.append(("DELETE", path, {}))
        return {"kind": "Status"}


def test_refused_progress_does_not_block_the_phase_or_the_actions() -> None:
    async def scenario() -> None:
        client = RefusingClient()
        c = Controller(
            client,  # type: ignore[arg-type]
            OperatorSettings(leader_election=False, identity="t"),
            OperatorMetrics(),
        )
        job = {"metadata": {"name": "j", "namespace": "ns", "uid": "u"}, "status": {}}
        plan = Plan(
            status={"phase": "Queued", "progress": {"etaSeconds": 10**300}},
            actions=[DeletePod("j-a1-0", "pod-uid")],
        )
        await c.execute(("ns", "j"), Observed(raw=job), plan)
        verbs = [(m, body) for m, _, body in client.calls]
        assert verbs[0][0] == "PATCH" and "progress" in verbs[0][1]["status"]
        assert verbs[1] == ("PATCH", {"status": {"phase": "Queued"}}), "retried without progress"
        assert verbs[2][0] == "DELETE", "the restart's deletion still happens"
        assert metric(c, 'kubetune_status_write_failures_total{code="422"}') == 1
        await c.stop()

    run(scenario())


def test_a_job_whose_status_is_refused_does_not_wedge_the_queue() -> None:
    async def scenario() -> None:
        c = controller(workers=1)
        seen: list[str] = []

        async def reconcile(key: tuple[str, str]) -> float | None:
            seen.append(key[1])
            if key[1] == "bad":
                raise ApiError(422, "Invalid", "refused")
            return None

        c.reconcile = reconcile  # type: ignore[method-assign]
        await c.start()
        c.queue.add(("ns", "bad"))
        c.queue.add(("ns", "good"))
        for _ in range(100):
            if "good" in seen and seen.count("bad") >= 2:
                break
            await asyncio.sleep(0.05)
        await c.stop()
        assert "good" in seen, "another job is served while one keeps failing"
        assert seen.count("bad") >= 2, "the failing job is retried (with backoff)"

    run(scenario())


# -- stall decisions need positive evidence ----------------------------------------------------
def sample_at(c: Any, step: int | None = None, error: str | None = None) -> ProgressSample:
    doc = {"state": "training", "step": step, "totalSteps": 1000} if step is not None else {}
    return ProgressSample(doc, c.now, attempt=c.status.get("attempts", 1), error=error)


def restarted(c: Any) -> bool:
    cond = c.condition("Restarting")
    return cond is not None and cond["status"] == "True"


def test_unreachable_progress_is_unknown_not_a_stall(make_cluster: Any) -> None:
    c = make_cluster(runPolicy={"stallTimeoutSeconds": 120})
    c.start_running()
    c.progress = sample_at(c, step=10)
    c.step()
    assert c.condition("ProgressKnown")["status"] == "True"
    for _ in range(20):  # 20 minutes of failed reads, 10x the stall timeout
        c.advance(60)
        c.progress = dataclasses.replace(
            c.progress, error="ClientConnectorError: connection refused (GET http://x/progress)"
        )
        plan = c.step()
        assert c.status["phase"] == "Running" and not restarted(c)
        assert plan.requeue_after is not None and plan.requeue_after <= 60
    assert plan.requeue_after == c.settings.progress_interval_seconds, "looks again soon"
    known = c.condition("ProgressKnown")
    assert known["status"] == "False" and known["reason"] == "ProgressUnreachable"
    assert "connection refused" in known["message"]
    assert ("Warning", "Restarting") not in [(t, r) for t, r, _ in c.events]


def test_never_reachable_progress_is_not_a_stall(make_cluster: Any) -> None:
    c = make_cluster(runPolicy={"stallTimeoutSeconds": 120})
    c.start_running()
    for _ in range(10):
        c.advance(60)
        c.progress = sample_at(c, error="timed out (GET http://x/progress)")
        c.step()
        assert c.status["phase"] == "Running" and not restarted(c)
    assert c.condition("ProgressKnown")["reason"] == "ProgressUnreachable"
    c.progress = None  # e.g. a restarted operator before its first read: also not a stall
    c.advance(600)
    c.step()
    assert c.status["phase"] == "Running" and not restarted(c)


def test_an_invalid_document_is_unknown_not_a_stall(make_cluster: Any) -> None:
    c = make_cluster(runPolicy={"stallTimeoutSeconds": 120})
    c.start_running()
    for _ in range(5):
        c.advance(60)
        c.progress = ProgressSample({"step": -1}, c.now, attempt=1)
        c.step()
    assert c.status["phase"] == "Running" and not restarted(c)
    assert c.condition("ProgressKnown")["reason"] == "ProgressInvalid"


def test_samples_of_a_frozen_step_restart_the_gang(make_cluster: Any) -> None:
    c = make_cluster(runPolicy={"stallTimeoutSeconds": 120})
    c.start_running()
    for _ in range(4):  # read every 30 s for 90 s, always step 10: not yet a stall
        c.progress = sample_at(c, step=10)
        c.step()
        assert not restarted(c)
        c.advance(30)
    # 120 s after step 10 was first seen (the clock starts then), a read shows it again.
    c.progress = sample_at(c, step=10)
    c.step()
    cond = c.condition("Restarting")
    assert cond is not None and cond["reason"] == "Stalled"
    assert "step 10" in cond["message"]
    assert c.status["attempts"] == 2


def test_advancing_progress_resets_the_stall_clock(make_cluster: Any) -> None:
    c = make_cluster(runPolicy={"stallTimeoutSeconds": 120})
    c.start_running()
    step = 0
    for _ in range(12):  # 20 minutes: the step advances every 100 s (< 120 s)
        step += 5
        c.progress = sample_at(c, step=step)
        c.step()
        for _ in range(2):  # re-read the same step in between
            c.advance(50)
            c.progress = sample_at(c, step=step)
            c.step()
            assert c.status["phase"] == "Running" and not restarted(c), step
    advanced_at = c.now - timedelta(seconds=100)
    # Now it freezes: still fine just before 120 s after the last advance ...
    c.advance(19)
    c.progress = sample_at(c, step=step)
    c.step()
    assert not restarted(c)
    assert (c.now - advanced_at).total_seconds() == 119
    # ... and stalled just after.
    c.advance(2)
    c.progress = sample_at(c, step=step)
    c.step()
    assert restarted(c) and c.condition("Restarting")["reason"] == "Stalled"


def test_a_frozen_step_seen_again_after_an_outage_is_a_stall(make_cluster: Any) -> None:
    c = make_cluster(runPolicy={"stallTimeoutSeconds": 120})
    c.start_running()
    c.progress = sample_at(c, step=10)
    c.step()
    c.advance(300)
    c.progress = dataclasses.replace(c.progress, error="timed out")
    c.step()
    assert not restarted(c)
    c.advance(15)
    c.progress = sample_at(c, step=10)  # reachable again: the step never moved in 315 s
    c.step()
    assert restarted(c) and c.condition("Restarting")["reason"] == "Stalled"
    assert c.condition("ProgressKnown") is None, "ProgressKnown describes a running gang"


def test_a_new_attempt_gets_a_fresh_stall_clock(make_cluster: Any) -> None:
    """Resuming at the checkpoint step the old gang stalled at is not an instant stall."""
    c = make_cluster(runPolicy={"stallTimeoutSeconds": 120})
    c.start_running()
    c.progress = sample_at(c, step=10)
    c.step()
    c.advance(130)
    c.progress = sample_at(c, step=10)
    c.step()
    assert restarted(c)
    c.advance(60)
    c.step()
    c.place_all(attempt=2)
    c.step()
    assert c.status["phase"] == "Running" and c.status["attempts"] == 2
    c.advance(10)
    c.progress = sample_at(c, step=10)  # resumed from a checkpoint at step 10
    c.step()
    assert c.status["phase"] == "Running"
    c.advance(100)
    c.progress = sample_at(c, step=10)
    c.step()
    assert c.status["phase"] == "Running", "the new gang has run for only 110 s"


def test_progress_of_a_previous_attempt_is_ignored(make_cluster: Any) -> None:
    c = make_cluster(runPolicy={"stallTimeoutSeconds": 120})
    c.start_running()
    c.progress = ProgressSample({"step": 99}, c.now, attempt=7, error=None)
    c.step()
    assert c.condition("ProgressKnown") is None
    assert c.status["progress"].get("step", 0) == 0


def test_a_flapping_progress_endpoint_does_not_force_status_writes() -> None:
    from kubetune_operator.controller import material

    known = {"phase": "Running", "conditions": [{"type": "ProgressKnown", "status": "True"}]}
    unknown = {"phase": "Running", "conditions": [{"type": "ProgressKnown", "status": "False"}]}
    assert material(known) == material(unknown), "coalesced like other cosmetic changes"
