"""Leader election on a coordination.k8s.io/v1 Lease (the client-go algorithm).

Only the leader runs the controller; standbys wait on the Lease. Expiry is judged by
each candidate's *own* clock from the moment it last saw the record change (so clock
skew between replicas does not matter). The leader renews every ``retry_period``; if it
cannot renew for ``renew_deadline`` (< ``lease_duration``) it stops acting -- before any
standby may take over -- and the process exits, as controller-runtime managers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubetune_operator.kube import ApiError, KubeClient
from kubetune_operator.settings import OperatorSettings

logger = logging.getLogger("kubetune.operator.leader")

GROUP = "coordination.k8s.io"


def micro_time(value: datetime | None = None) -> str:
    """``metav1.MicroTime`` (RFC 3339 with microseconds)."""
    value = value or datetime.now(UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    duration: float
    transitions: int
    acquire_time: str | None
    renew_time: str | None

    @classmethod
    def of(cls, lease: dict[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration=float(spec.get("leaseDurationSeconds") or 0),
            transitions=int(spec.get("leaseTransitions") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
        )


class LeaderElector:
    def __init__(
        self,
        client: KubeClient,
        settings: OperatorSettings,
        clock: Any = time.monotonic,
    ) -> None:
        self.client = client
        self.settings = settings
        self.identity = settings.identity
        self._clock = clock
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._last_renew = 0.0
        self.is_leader = False
        self.lost = False

    @property
    def path(self) -> str:
        return self.client.path(
            "leases", self.settings.lease_namespace, self.settings.lease_name, group=GROUP
        )

    def _spec(self, previous: LeaseRecord | None) -> dict[str, Any]:
        now = micro_time()
        mine = previous is not None and previous.holder == self.identity
        transitions = previous.transitions if previous else 0
        if previous is not None and previous.holder and not mine:
            transitions += 1
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.settings.lease_duration_seconds)),
            "acquireTime": previous.acquire_time if mine and previous else now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    async def try_acquire_or_renew(self) -> bool:
        """One round of the algorithm; True while this replica holds the lease."""
        now = self._clock()
        try:
            lease = await self.client.get(self.path)
        except ApiError as exc:
            if not exc.not_found:
                raise
            body = {
                "apiVersion": f"{GROUP}/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.settings.lease_name,
                    "namespace": self.settings.lease_namespace,
                },
                "spec": self._spec(None),
            }
            try:
                created = await self.client.create(
                    self.client.path("leases", self.settings.lease_namespace, group=GROUP), body
                )
            except ApiError as create_exc:
                if create_exc.conflict:
                    return False
                raise
            self._observe(LeaseRecord.of(created), now)
            return True
        record = LeaseRecord.of(lease)
        if record != self._observed:
            self._observe(record, now)
        held_by_other = bool(record.holder) and record.holder != self.identity
        if held_by_other and self._observed_at + record.duration > now:
            return False
        lease["spec"] = self._spec(record)
        try:
            updated = await self.client.replace(self.path, lease)
        except ApiError as exc:
            if exc.conflict:
                return False
            raise
        self._observe(LeaseRecord.of(updated), now)
        return True

    def _observe(self, record: LeaseRecord, at: float) -> None:
        self._observed = record
        self._observed_at = at

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Block until leadership is acquired (True) or ``stop`` is set (False)."""
        logged = False
        while not stop.is_set():
            try:
                if await self.try_acquire_or_renew():
                    self.is_leader = True
                    self._last_renew = self._clock()
                    logger.info(
                        "%s acquired lease %s/%s",
                        self.identity,
                        self.settings.lease_namespace,
                        self.settings.lease_name,
                    )
                    return True
            except Exception as exc:
                logger.warning("leader election: %s", exc)
            if not logged and self._observed is not None:
                logger.info("standing by: lease held by %s", self._observed.holder)
                logged = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.retry_period_seconds):
                    await stop.wait()
        return False

    async def hold(self, on_lost: asyncio.Event) -> None:
        """Renew until the renew deadline is missed; then set ``on_lost`` and return."""
        period = self.settings.retry_period_seconds
        deadline = self.settings.renew_deadline_seconds
        while True:
            await asyncio.sleep(period)
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
                # cancellation that arrives as the renewal completes, and the renewer would
                # keep renewing a lease its process is shutting down (and never finish).
                async with asyncio.timeout(deadline):
                    renewed = await self.try_acquire_or_renew()
            except Exception as exc:
                logger.warning("renewing the lease failed: %s", exc)
                renewed = False
            now = self._clock()
            if renewed:
                self._last_renew = now
                continue
            if now - self._last_renew >= deadline:
                logger.error("lost the lease %s: stopping", self.settings.lease_name)
                self.is_leader = False
                self.lost = True
                on_lost.set()
                return

    async def release(self) -> None:
        """Hand the lease over at once on a clean shutdown (standbys need not wait it out)."""
        if not self.is_leader:
            return
        try:
            lease = await self.client.get(self.path)
            if LeaseRecord.of(lease).holder != self.identity:
                return
            lease["spec"]["holderIdentity"] = ""
            lease["spec"]["leaseDurationSeconds"] = 1
            lease["spec"]["renewTime"] = micro_time()
            await self.client.replace(self.path, lease)
            logger.info("released lease %s", self.settings.lease_name)
        except Exception as exc:
            logger.warning("releasing the lease failed: %s", exc)
        self.is_leader = False
