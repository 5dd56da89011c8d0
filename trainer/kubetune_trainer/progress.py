"""The rank-0 progress document: an atomically replaced file plus the HTTP copy.

The operator turns it into ``status.progress`` without the pods having API rights.
It is rewritten at every logged step and, by a heartbeat thread, at least every
``HEARTBEAT_SECONDS`` (with a fresh ``updatedAt``) so a stalled-but-alive trainer can be
told apart from a dead one.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubetune.contract import ProgressDocument
from kubetune_trainer.checkpoint.atomic import write_atomic

HEARTBEAT_SECONDS = 5.0


class ProgressReporter:
    """Holds the current document; writes it when enabled (rank 0)."""

    def __init__(self, path: Path | None, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled and path is not None
        self.doc = ProgressDocument(state="validating")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self, **fields: Any) -> None:
        with self._lock:
            data = self.doc.model_dump()
            data.update(fields)
            data["updated_at"] = datetime.now(UTC)
            self.doc = ProgressDocument.model_validate(data)
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
