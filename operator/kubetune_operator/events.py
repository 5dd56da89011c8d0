"""Aggregated core/v1 Events, the way client-go's ``EventCorrelator`` does it.

A condition that persists (a gang that cannot be placed is retried every
``unschedulable_retry_seconds``) must not create a new Event object on every retry: that
floods etcd and ``kubectl describe`` alike. :class:`EventRecorder` therefore

* **aggregates**: a repeat of the same (involved object uid, type, reason) within
  :data:`AGGREGATION_WINDOW_SECONDS` of the previous one PATCHes the existing Event
  (``count`` + 1, ``lastTimestamp``, the newest ``message``; a JSON merge patch) instead of
  creating another one. If the Event is gone (the API server's event TTL, someone deleted
  it), the patch answers 404 and a fresh Event is created;
* **caps spam**: a token bucket per involved object (burst :data:`SPAM_BURST`, one token
  back every :data:`SPAM_REFILL_SECONDS`, as client-go's spam filter). A post over the cap
  makes no request; it is counted into the next Event written for its key;
* **bounds memory**: at most ``max_keys`` aggregation keys and as many token buckets,
  least recently used first out (a key that falls out only costs a new Event object);
* is **best effort**: :meth:`EventRecorder.post` never raises (an Event must never block
  or fail a reconcile); failures are logged and the post is counted into the next one.

One recorder per operator process; :meth:`EventRecorder.forget` drops what it keeps for a
deleted object.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubetune_operator.kube import MERGE_PATCH, ApiError, KubeClient
from kubetune_operator.observed import format_time

logger = logging.getLogger(__name__)

#: A repeat within this many seconds of the previous post updates the same Event.
AGGREGATION_WINDOW_SECONDS = 600.0
#: Aggregation keys (and token buckets) kept; client-go keeps 4096 too.
MAX_KEYS = 4096
#: Posts per involved object allowed in a burst ...
SPAM_BURST = 25
#: ... and then one more per this many seconds.
SPAM_REFILL_SECONDS = 300.0
#: The longest message written (the limit of an events.k8s.io note).
MAX_MESSAGE = 1024
#: The longest Event name (a DNS subdomain).
_MAX_NAME = 253

Key = tuple[str, str, str]  # (involved uid, type, reason)


@dataclass
class _Entry:
    """What the recorder remembers about one aggregation key."""

    name: str | None = None  # the Event object's name, once created
    count: int = 0  # its count as last written
    last: datetime | None = None  # when it was last written
    pending: int = 0  # posts not written yet (over the spam cap, or a failed request)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class _Bucket:
    tokens: float
    at: datetime


def _now() -> datetime:
    return datetime.now(UTC)


def event_name(involved_name: str) -> str:
    """``<object name>.<16 hex>``, shortened so that it stays a valid object name."""
    suffix = uuid.uuid4().hex[:16]
    prefix = involved_name[: _MAX_NAME - len(suffix) - 1].rstrip(".-") or "event"
    return f"{prefix}.{suffix}"


class EventRecorder:
    """Posts aggregated, rate-limited core/v1 Events (see the module docstring).

    ``component`` is the Event's ``source.component`` (and ``reportingComponent`` unless
    ``reporting_component`` is given); ``instance`` its ``reportingInstance``. ``clock``
    returns the current time (aware datetime): Event timestamps, the aggregation window
    and the spam cap all use it.
    """

    def __init__(
        self,
        client: KubeClient,
        component: str,
        instance: str,
        clock: Callable[[], datetime] = _now,
        *,
        reporting_component: str | None = None,
        window_seconds: float = AGGREGATION_WINDOW_SECONDS,
        max_keys: int = MAX_KEYS,
        burst: int = SPAM_BURST,
        refill_seconds: float = SPAM_REFILL_SECONDS,
    ) -> None:
        self.client = client
        self.component = component
        self.reporting_component = reporting_component or component
        self.instance = instance[:128]
        self.clock = clock
        self.window_seconds = window_seconds
        self.max_keys = max_keys
        self.burst = burst
        self.refill_seconds = refill_seconds
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        #: Requests made and posts held back (for tests and metrics).
        self.created = 0
        self.patched = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._entries)

    # -- public ---------------------------------------------------------------------------------
    async def post(self, involved: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        """Record an Event about ``involved`` (``apiVersion``, ``kind``, ``name``,
        ``namespace``, ``uid``). Never raises."""
        try:
            await self._post(involved, type, reason, message)
        except Exception as exc:  # best effort: an Event never blocks or fails a reconcile
            logger.info("could not post event %s on %s: %s", reason, involved.get("name"), exc)

    def forget(self, uid: str) -> None:
        """Drop the aggregation state and the token bucket of a deleted object."""
        for key in [k for k in self._entries if k[0] == uid]:
            del self._entries[key]
        self._buckets.pop(uid, None)

    # -- internals ------------------------------------------------------------------------------
    async def _post(
        self, involved: Mapping[str, Any], type: str, reason: str, message: str
    ) -> None:
        uid = str(involved.get("uid") or f"{involved.get('namespace')}/{involved.get('name')}")
        now = self.clock()
        entry = self._entry((uid, type, reason))
        if not self._allow(uid, now):
            entry.pending += 1
            self.dropped += 1
            return
        message = message[:MAX_MESSAGE]
        async with entry.lock:
            increment = 1 + entry.pending
            entry.pending = 0
            try:
                if (
                    entry.name is not None
                    and entry.last is not None
                    and (now - entry.last).total_seconds() <= self.window_seconds
                    and await self._patch(involved, entry, increment, now, message)
                ):
                    return
                await self._create(involved, entry, increment, type, reason, now, message)
            except BaseException:
                entry.pending += increment  # counted into the next Event of this key
                raise

    def _entry(self, key: Key) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
            while len(self._entries) > self.max_keys:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return entry

    def _allow(self, uid: str, now: datetime) -> bool:
        """Take a token from the object's bucket; False when it is empty."""
        bucket = self._buckets.get(uid)
        if bucket is None:
            bucket = self._buckets[uid] = _Bucket(float(self.burst), now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(uid)
            elapsed = max(0.0, (now - bucket.at).total_seconds())
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed / self.refill_seconds)
            bucket.at = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    async def _patch(
        self,
        involved: Mapping[str, Any],
        entry: _Entry,
        increment: int,
        now: datetime,
        message: str,
    ) -> bool:
        """Update the existing Event; False when it no longer exists."""
        assert entry.name is not None
        path = self.client.path("events", str(involved.get("namespace")), entry.name)
        count = entry.count + increment
        body = {"count": count, "lastTimestamp": format_time(now), "message": message}
        try:
            await self.client.patch(path, body, MERGE_PATCH)
        except ApiError as exc:
            if exc.not_found:
                entry.name = None
                return False
            raise
        entry.count, entry.last = count, now
        self.patched += 1
        return True

    async def _create(
        self,
        involved: Mapping[str, Any],
        entry: _Entry,
        count: int,
        type: str,
        reason: str,
        now: datetime,
        message: str,
    ) -> None:
        namespace = str(involved.get("namespace"))
        name = event_name(str(involved.get("name") or "event"))
        stamp = format_time(now)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {
                k: involved[k]
                for k in ("apiVersion", "kind", "name", "namespace", "uid")
                if involved.get(k)
            },
            "type": type,
            "reason": reason,
            "message": message,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": count,
            "source": {"component": self.component},
            "reportingComponent": self.reporting_component,
            "reportingInstance": self.instance,
        }
        await self.client.create(self.client.path("events", namespace), body)
        entry.name, entry.count, entry.last = name, count, now
        self.created += 1
