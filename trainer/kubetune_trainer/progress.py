"""The rank-0 progress document: an atomically replaced file plus the HTTP copy.

The operator turns it into ``status.progress`` without the pods having API rights.
It is rewritten at logged steps (at most every ``WRITE_INTERVAL_SECONDS``, at once
when the state changes) and, by a heartbeat thread, at least every
``HEARTBEAT_SECONDS`` (with a fresh ``updatedAt``) so a stalled-but-alive trainer can be
told apart from a dead one.
"""

from __future__ import annotations

import math
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubetune.contract import ProgressDocument
from kubetune_trainer.checkpoint.atomic import write_atomic

HEARTBEAT_SECONDS = 5.0
#: ``update`` rewrites the file at most this often unless the state changes: an atomic
#: replace per step costs 0.5-5 ms (more on network volumes), alone several percent of a
#: short step (benchmarks/trainer/metrics_overhead.py); ``/progress`` is always current
WRITE_INTERVAL_SECONDS = 1.0


class ProgressReporter:
    """Holds the current document; writes it when enabled (rank 0)."""

    def __init__(self, path: Path | None, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled and path is not None
        self.doc = ProgressDocument(state="validating")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_write = -math.inf

    def update(self, **fields: Any) -> None:
        with self._lock:
            data = self.doc.model_dump()
            new_state = fields.get("state", data["state"]) != data["state"]
            data.update(fields)
            data["updated_at"] = datetime.now(UTC)
            self.doc = ProgressDocument.model_validate(data)
        if new_state or time.monotonic() - self._last_write >= WRITE_INTERVAL_SECONDS:
            self.write()

    def json(self) -> str:
        with self._lock:
            return self.doc.to_json()

    def write(self) -> None:
        if not self.enabled or self.path is None:
            return
        with self._lock:
            self.doc = self.doc.model_copy(update={"updated_at": datetime.now(UTC)})
            text = self.doc.to_json()
            self._last_write = time.monotonic()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, text, durable=False)
        except OSError:
            pass  # progress is advisory; never fail training over it

    def start_heartbeat(self, interval: float = HEARTBEAT_SECONDS) -> None:
        if not self.enabled or self._thread is not None:
            return

        def beat() -> None:
            while not self._stop.wait(interval):
                self.write()

        self._thread = threading.Thread(target=beat, name="kubetune-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.write()
