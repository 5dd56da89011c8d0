"""The leader keeps renewing its Lease for as long as it leads, and one that cannot renew
stops acting before any standby may take over (issue 9, 21).

The failover e2e test runs within one lease period, so a leader that never renewed would
pass it; here a leader holds the Lease for several lease durations against an in-memory
API while a standby keeps trying to take it over.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest

from kubetune_operator.kube import ApiError, KubeClient
from kubetune_operator.leader import LeaderElector
from kubetune_operator.settings import OperatorSettings

DURATION = 1.0  # lease duration (s)
DEADLINE = 0.6  # renew deadline (s)
PERIOD = 0.05  # retry period (s)


class FakeLeaseApi:
    """One namespace of Leases with resourceVersion conflicts; ``broken`` makes every call
    fail ("error") or hang ("hang"), like an unreachable API server."""

    path = staticmethod(KubeClient.path)

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.rv = 0
        self.renewals: list[tuple[float, str, str]] = []  # (monotonic, holder, renewTime)
        self.calls = 0
        self.broken: str | None = None
        self.on_call: Callable[[], None] | None = None

    async def _gate(self) -> None:
        self.calls += 1
        if self.on_call is not None:
            hook, self.on_call = self.on_call, None
            hook()
        if self.broken == "error":
            raise ApiError(503, "ServiceUnavailable", "injected")
        if self.broken == "hang":
            await asyncio.sleep(3600)

    async def get(self, path: str) -> dict[str, Any]:
        await self._gate()
        if path not in self.objects:
            raise ApiError(404, "NotFound", path)
        return copy.deepcopy(self.objects[path])

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        await self._gate()
        full = f"{path}/{body['metadata']['name']}"
        if full in self.objects:
            raise ApiError(409, "AlreadyExists", full)
        self.rv += 1
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[full] = body
        self._record(body)
        return copy.deepcopy(body)

    async def replace(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        await self._gate()
        current = self.objects[path]
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "resourceVersion")
        self.rv += 1
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[path] = body
        self._record(body)
        return copy.deepcopy(body)

    def _record(self, body: dict[str, Any]) -> None:
        spec = body["spec"]
        self.renewals.append((time.monotonic(), spec["holderIdentity"], spec["renewTime"]))


def settings(identity: str) -> OperatorSettings:
    return OperatorSettings(
        identity=identity,
        lease_namespace="sys",
        lease_duration_seconds=DURATION,
        renew_deadline_seconds=DEADLINE,
        retry_period_seconds=PERIOD,
    )


async def standby(elector: LeaderElector, until: asyncio.Event, acquired: list[float]) -> None:
    """A second replica trying every retry period, as LeaderElector.acquire does."""
    while not until.is_set():
        try:
            async with asyncio.timeout(DEADLINE):
                won = await elector.try_acquire_or_renew()
            if won:
                acquired.append(time.monotonic())
                return
        except Exception:
            pass
        await asyncio.sleep(PERIOD)


def test_the_leader_renews_every_retry_period_for_many_lease_durations() -> None:
    async def scenario() -> None:
        api = FakeLeaseApi()
        leader = LeaderElector(api, settings("a"))  # type: ignore[arg-type]
        other = LeaderElector(api, settings("b"))  # type: ignore[arg-type]
        stop = asyncio.Event()
        assert await leader.acquire(stop)
        holding = asyncio.create_task(leader.hold(stop))
        done = asyncio.Event()
        acquired: list[float] = []
        contender = asyncio.create_task(standby(other, done, acquired))
        started = time.monotonic()
        await asyncio.sleep(4 * DURATION)
        done.set()
        await contender
        assert not holding.done() and not stop.is_set(), "the leader must keep its lease"
        holding.cancel()
        finished, _ = await asyncio.wait({holding}, timeout=2.0)
        assert holding in finished

        assert not acquired, "a renewing leader's lease never expires for the standby"
        mine = [(t, renew) for t, holder, renew in api.renewals if holder == "a" and t >= started]
        # Every retry period (with generous slack for a busy machine), never a gap that
        # would let the lease expire.
        assert len(mine) >= (4 * DURATION / PERIOD) / 4, len(mine)
        times = [started] + [t for t, _ in mine]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps) < DURATION, max(gaps)
        renew_times = [renew for _, renew in mine]
        assert renew_times == sorted(renew_times) and len(set(renew_times)) == len(renew_times)
        assert leader.is_leader and not leader.lost

    asyncio.run(scenario())


@pytest.mark.parametrize("failure", ["error", "hang"])
def test_a_leader_that_cannot_renew_stops_before_a_standby_takes_over(failure: str) -> None:
    async def scenario() -> None:
        api = FakeLeaseApi()
        leader = LeaderElector(api, settings("a"))  # type: ignore[arg-type]
        other = LeaderElector(api, settings("b"))  # type: ignore[arg-type]
        stop = asyncio.Event()
        assert await leader.acquire(stop)
        holding = asyncio.create_task(leader.hold(stop))
        await asyncio.sleep(2 * DURATION)  # renewing fine for a while
        assert not stop.is_set()
        last_renewal = max(t for t, holder, _ in api.renewals if holder == "a")

        api.broken = failure  # the leader's API calls now fail (a partition)
        await asyncio.wait_for(holding, DEADLINE + 4 * PERIOD + 2.0)
        lost_at = time.monotonic()
        assert stop.is_set(), "the stop flag of the controller (kopf) is raised"
        assert leader.lost and not leader.is_leader
        assert lost_at - last_renewal < DURATION, "stops acting before the lease can expire"
        calls = api.calls
        await asyncio.sleep(5 * PERIOD)
        assert api.calls == calls, "a deposed leader makes no more calls"

        # The API heals for the standby: it takes over only once the lease expired.
        api.broken = None
        done = asyncio.Event()
        acquired: list[float] = []
        await asyncio.wait_for(standby(other, done, acquired), 5 * DURATION)
        assert acquired and acquired[0] >= last_renewal + DURATION * 0.9
        assert acquired[0] > lost_at, "never two leaders at once"
        lease = next(iter(api.objects.values()))
        assert lease["spec"]["holderIdentity"] == "b"

    asyncio.run(scenario())


def test_cancelling_the_renewer_mid_renewal_stops_it() -> None:
    """On shutdown the runner cancels the renewer and awaits it: a cancellation that lands
    while a renewal completes must not be swallowed (the renewer would keep the lease and
    the shutdown would never finish)."""

    async def scenario() -> None:
        api = FakeLeaseApi()
        leader = LeaderElector(api, settings("a"))  # type: ignore[arg-type]
        stop = asyncio.Event()
        assert await leader.acquire(stop)
        holding = asyncio.create_task(leader.hold(stop))
        api.on_call = holding.cancel  # cancelled while its next renewal is in flight
        done, _ = await asyncio.wait({holding}, timeout=5 * PERIOD + 1.0)
        assert holding in done and holding.cancelled()
        calls = api.calls
        await asyncio.sleep(5 * PERIOD)
        assert api.calls == calls, "no renewals after the renewer was cancelled"

    asyncio.run(scenario())
