"""The validation-report cache, bounded by bytes rather than by count.

``validate_manifest`` runs once per spec version of a job; its
:class:`~kubetune.api.validation.ValidationReport` holds the parsed job, whose spec may be
close to the API server's ~1.5 MB object limit. A cache bounded by count (4096 reports)
could therefore hold gigabytes. :class:`ReportCache` keeps

* one report per job uid: a newer generation or spec replaces the older one (an old
  version's verdict is never needed again);
* at most ``max_bytes`` in all, estimated as the length of the spec's JSON plus a fixed
  overhead per entry; the least recently used reports go first. A report larger than the
  whole budget is not kept (the job is simply re-validated next time).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

#: Default budget: 64 MiB of spec JSON.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: Bytes charged per entry on top of its spec (the report object, keys, bookkeeping).
ENTRY_OVERHEAD = 2048

V = TypeVar("V")


def spec_digest(spec: Any) -> tuple[str, int]:
    """(sha256 hex digest, length in bytes) of the spec's canonical JSON: the cache key
    part that changes with the spec, and the size estimate :meth:`ReportCache.put` takes."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(text).hexdigest(), len(text)


@dataclass
class _Slot(Generic[V]):
    generation: int | None
    digest: str
    value: V
    size: int


class ReportCache(Generic[V]):
    """Validation reports by job uid, LRU, bounded by an estimate of their bytes."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._slots: OrderedDict[str, _Slot[V]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def bytes(self) -> int:
        """The estimated size of what is held (never above ``max_bytes``)."""
        return self._bytes

    def get(self, uid: str, generation: int | None, digest: str) -> V | None:
        """The report of exactly this version of the job, or None."""
        slot = self._slots.get(uid)
        if slot is None or slot.generation != generation or slot.digest != digest:
            return None
        self._slots.move_to_end(uid)
        return slot.value

    def put(self, uid: str, generation: int | None, digest: str, value: V, size: int) -> None:
        """Keep ``value`` for this version of the job (``size``: the spec JSON's length, see
        :func:`spec_digest`), replacing any older version's report."""
        self.forget(uid)
        cost = max(0, size) + ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return
        self._slots[uid] = _Slot(generation, digest, value, cost)
        self._bytes += cost
        while self._bytes > self.max_bytes:
            _, evicted = self._slots.popitem(last=False)
            self._bytes -= evicted.size

    def forget(self, uid: str) -> None:
        """Drop the job's report (the job was deleted, or finished)."""
        slot = self._slots.pop(uid, None)
        if slot is not None:
            self._bytes -= slot.size

    def clear(self) -> None:
        self._slots.clear()
        self._bytes = 0


def job_version(raw: Mapping[str, Any]) -> tuple[str, int | None, str, int]:
    """(uid, generation, spec digest, spec size) of a FineTuneJob body: the arguments of
    :meth:`ReportCache.get` / :meth:`ReportCache.put` for it."""
    meta = raw.get("metadata") or {}
    generation = meta.get("generation")
    digest, size = spec_digest(raw.get("spec"))
    return (
        str(meta.get("uid")),
        generation if isinstance(generation, int) else None,
        digest,
        size,
    )
