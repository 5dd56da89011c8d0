"""Event aggregation (issue 9, item 11): a condition that persists updates one Event
instead of creating one per retry; spam is capped per object; memory is bounded; posting
never raises."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from kubetune_operator.events import EventRecorder, event_name
from kubetune_operator.kube import MERGE_PATCH, ApiError, KubeClient

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
NS = "team"
EVENTS = f"/api/v1/namespaces/{NS}/events"


def job(name: str = "tune", uid: str = "uid-tune") -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "name": name,
        "namespace": NS,
        "uid": uid,
    }


class FakeEvents:
    """Records every request; stores Events so that a PATCH of a deleted one is a 404."""

    path = staticmethod(KubeClient.path)

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.objects: dict[str, dict[str, Any]] = {}
        self.fail_next: int | None = None  # HTTP status of the next request

    async def _record(self, method: str, path: str, body: Any) -> None:
        self.requests.append((method, path, copy.deepcopy(body)))
        await asyncio.sleep(0)  # a round trip: other posts run meanwhile
        if self.fail_next is not None:
            status, self.fail_next = self.fail_next, None
            raise ApiError(status, "Boom", "injected")

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        await self._record("POST", path, body)
        self.objects[f"{path}/{body['metadata']['name']}"] = copy.deepcopy(body)
        return body

    async def patch(self, path: str, body: Any, content_type: str = "") -> dict[str, Any]:
        assert content_type == MERGE_PATCH, "core/v1 Events take a JSON merge patch"
        await self._record("PATCH", path, body)
        if path not in self.objects:
            raise ApiError(404, "NotFound", path)
        self.objects[path].update(copy.deepcopy(body))
        return self.objects[path]

    def methods(self) -> list[str]:
        return [m for m, _, _ in self.requests]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def recorder(api: FakeEvents, clock: Clock, **kw: Any) -> EventRecorder:
    return EventRecorder(api, "kubetune-operator", "op-0", clock, **kw)  # type: ignore[arg-type]


def test_first_post_creates_the_event_with_every_field() -> None:
    api, clock = FakeEvents(), Clock()
    rec = recorder(api, clock, reporting_component="kubetune.io/operator")
    asyncio.run(rec.post(job(), "Warning", "GangUnschedulable", "0/4 nodes are available"))
    assert len(api.requests) == 1
    method, path, body = api.requests[0]
    assert (method, path) == ("POST", EVENTS)
    name = body["metadata"].pop("name")
    assert name.startswith("tune.") and len(name) == len("tune.") + 16
    assert body == {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"namespace": NS},
        "involvedObject": job(),
        "type": "Warning",
        "reason": "GangUnschedulable",
        "message": "0/4 nodes are available",
        "firstTimestamp": "2026-01-01T12:00:00Z",
        "lastTimestamp": "2026-01-01T12:00:00Z",
        "count": 1,
        "source": {"component": "kubetune-operator"},
        "reportingComponent": "kubetune.io/operator",
        "reportingInstance": "op-0",
    }


def test_repeats_within_the_window_patch_one_event() -> None:
    api, clock = FakeEvents(), Clock()
    rec = recorder(api, clock)

    async def scenario() -> None:
        await rec.post(job(), "Warning", "GangUnschedulable", "try 1")
        for i in range(2, 5):  # an unschedulable gang: one post every ~70 s
            clock.advance(70)
            await rec.post(job(), "Warning", "GangUnschedulable", f"try {i}")

    asyncio.run(scenario())
    assert api.methods() == ["POST", "PATCH", "PATCH", "PATCH"]
    name = api.requests[0][2]["metadata"]["name"]
    for i, (_, path, body) in enumerate(api.requests[1:], start=2):
        assert path == f"{EVENTS}/{name}"
        last = T0 + timedelta(seconds=70 * (i - 1))
        assert body == {
            "count": i,
            "lastTimestamp": last.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "message": f"try {i}",
        }
    stored = api.objects[f"{EVENTS}/{name}"]
    assert stored["count"] == 4 and stored["message"] == "try 4"
    assert stored["firstTimestamp"] == "2026-01-01T12:00:00Z"


def test_different_reason_type_or_object_is_a_different_event() -> None:
    api, clock = FakeEvents(), Clock()
    rec = recorder(api, clock)

    async def scenario() -> None:
        await rec.post(job(), "Warning", "GangUnschedulable", "m")
        await rec.post(job(), "Warning", "FailedCreate", "m")
        await rec.post(job(), "Normal", "GangUnschedulable", "m")
        await rec.post(job("other", "uid-other"), "Warning", "GangUnschedulable", "m")
        await rec.post(job(), "Warning", "GangUnschedulable", "m")

    asyncio.run(scenario())
    assert api.methods() == ["POST", "POST", "POST", "POST", "PATCH"]
    assert api.requests[3][2]["involvedObject"]["uid"] == "uid-other"
    assert api.requests[4][1] == f"{EVENTS}/{api.requests[0][2]['metadata']['name']}"


def test_after_the_window_a_new_event_is_created() -> None:
    api, clock = FakeEvents(), Clock()
    rec = recorder(api, clock)

    async def scenario() -> None:
        await rec.post(job(), "Warning", "R", "a")
        clock.advance(600)
        await rec.post(job(), "Warning", "R", "b")  # exactly at the window: aggregated
        clock.advance(601)
        await rec.post(job(), "Warning", "R", "c")

    asyncio.run(scenario())
    assert api.methods() == ["POST", "PATCH", "POST"]
    assert api.requests[2][2]["count"] == 1
    assert api.requests[2][2]["message"] == "c"


def test_an_expired_event_is_created_afresh() -> None:
    api, clock = FakeEvents(), Clock()
    rec = recorder(api, clock)

    async def scenario() -> None:
        await rec.post(job(), "Warning", "R", "a")
        api.objects.clear()  # the API server's event TTL removed it
        clock.advance(10)
        await rec.post(job(), "Warning", "R", "b")
        clock.advance(10)
        await rec.post(job(), "Warning", "R", "c")

    asyncio.run(scenario())
    assert api.methods() == ["POST", "PATCH", "POST", "PATCH"]
    created = api.requests[2][2]
    assert created["count"] == 1 and created["message"] == "b"
    assert created["firstTimestamp"] == "2026-01-01T12:00:10Z"
    assert api.requests[3][1] == f"{EVENTS}/{created['metadata']['name']}"
    assert api.requests[3][2]["count"] == 2


def test_spam_cap_per_object_and_dropped_posts_are_counted_later() -> None:
    api, clock = FakeEvents(), Clock()
    rec = recorder(api, clock, burst=3, refill_seconds=300)

    async def scenario() -> None:
        for i in range(6):  # 3 allowed, 3 held back
            await rec.post(job(), "Warning", "R", f"m{i}")
        # Another object has its own bucket.
        await rec.post(job("b", "uid-b"), "Warning", "R", "other")
        clock.advance(299)
        await rec.post(job(), "Warning", "R", "m6")  # still no token
        clock.advance(1)
        await rec.post(job(), "Warning", "R", "m7")  # one token back

    asyncio.run(scenario())
    assert api.methods() == ["POST", "PATCH", "PATCH", "POST", "PATCH"]
    assert rec.dropped == 4
    last = api.requests[-1][2]
    assert last["count"] == 8, "the 4 held-back posts are counted into the next write"
    assert last["message"] == "m7"


def test_spam_cap_defaults_are_client_go_s() -> None:
    api, clock = FakeEvents(), Clock()
    rec = recorder(api, clock)

    async def scenario() -> None:
        for i in range(30):
            await rec.post(job(), "Warning", "R", f"m{i}")

    asyncio.run(scenario())
    assert len(api.requests) == 25
    assert rec.burst == 25 and rec.refill_seconds == 300 and rec.window_seconds == 600


def test_memory_is_bounded_lru() -> None:
    api, clock = FakeEvents(), Clock()
    rec = recorder(api, clock, max_keys=3)

    async def scenario() -> None:
        for uid in ("a", "b", "c"):
            await rec.post(job(uid, uid), "Warning", "R", "m")
        await rec.post(job("a", "a"), "Warning", "R", "m")  # a is now the newest
        await rec.post(job("d", "d"), "Warning", "R", "m")  # b (least recent) goes
        assert len(rec) == 3 and len(rec._buckets) == 3
        api.requests.clear()
        await rec.post(job("a", "a"), "Warning", "R", "m")
        await rec.post(job("b", "b"), "Warning", "R", "m")

    asyncio.run(scenario())
    assert api.methods() == ["PATCH", "POST"], "b was forgotten: a new Event"


def test_forget_drops_the_object_s_state() -> None:
    api, clock = FakeEvents(), Clock()
    rec = recorder(api, clock, burst=1, refill_seconds=1e9)

    async def scenario() -> None:
        await rec.post(job(), "Warning", "R", "m")
        await rec.post(job(), "Warning", "R", "dropped")
        await rec.post(job("b", "uid-b"), "Warning", "R", "m")
        rec.forget("uid-tune")
        assert len(rec) == 1
        await rec.post(job(), "Warning", "R", "again")

    asyncio.run(scenario())
    assert api.methods() == ["POST", "POST", "POST"], "fresh bucket, fresh Event"
    assert api.requests[-1][2]["count"] == 1


def test_never_raises_and_a_failed_write_is_counted_into_the_next() -> None:
    api, clock = FakeEvents(), Clock()
    rec = recorder(api, clock)

    async def scenario() -> None:
        api.fail_next = 403
        await rec.post(job(), "Warning", "R", "a")  # the create is refused
        await rec.post(job(), "Warning", "R", "b")
        api.fail_next = 500
        await rec.post(job(), "Warning", "R", "c")  # the patch fails
        await rec.post(job(), "Warning", "R", "d")

    asyncio.run(scenario())
    assert api.methods() == ["POST", "POST", "PATCH", "PATCH"]
    assert api.requests[1][2]["count"] == 2
    assert api.requests[3][2]["count"] == 4


def test_concurrent_repeats_make_one_event() -> None:
    api, clock = FakeEvents(), Clock()
    rec = recorder(api, clock)

    async def scenario() -> None:
        await asyncio.gather(*(rec.post(job(), "Warning", "R", f"m{i}") for i in range(5)))

    asyncio.run(scenario())
    assert api.methods() == ["POST", "PATCH", "PATCH", "PATCH", "PATCH"]
    assert [b["count"] for _, _, b in api.requests] == [1, 2, 3, 4, 5]


def test_long_messages_and_names_are_clipped() -> None:
    api, clock = FakeEvents(), Clock()
    rec = recorder(api, clock)
    long_name = "a" * 235 + "-" + "b" * 17  # 253 characters; cut at the "-"
    asyncio.run(rec.post(job(long_name), "Warning", "R", "x" * 100_000))
    body = api.requests[0][2]
    assert len(body["message"]) == 1024
    name = body["metadata"]["name"]
    assert len(name) == 252 and name.startswith("a" * 235 + "."), "ends alphanumeric"
    assert body["involvedObject"]["name"] == long_name
    assert event_name("x.-").startswith("x.")
