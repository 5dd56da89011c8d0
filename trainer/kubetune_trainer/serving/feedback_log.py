"""The feedback log: one JSON line per piece of feedback, with what it was about.

``kubetune serve --feedback-log PATH`` remembers, for a bounded number of recent
completions, the prompt (the chat messages, or the completion prompt) and the response it
sent; when ``/v1/feedback`` names one of them, a line goes to the log::

    {"v": 1, "time": "2026-12-03T08:30:00Z", "id": "chatcmpl-…", "model": "support-v2",
     "prompt": [{"role": "user", "content": "…"}], "response": "…",
     "rating": "negative", "score": 2, "correction": "…"}

``kubetune feedback build`` turns logs like this into training data
(docs/feedback-loop.md). The lines hold what users typed: the file is created with mode
0600 and nothing of its content ever goes to the server's own log or stdout.

Each line is one ``os.write`` of the whole line to a descriptor opened with ``O_APPEND``,
so a line is either entirely in the file or not at all, and readers never see half of
one. When the next line would take the file past ``max_bytes`` it is rotated first:
``PATH`` becomes ``PATH.1`` (``PATH.1`` becomes ``PATH.2``, …, up to ``backups``; the
oldest is deleted), so the log never takes more than ``(backups + 1) * max_bytes``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_trainer.serving.protocol import Feedback

#: Record version: bump when a field changes meaning.
LOG_VERSION = 1
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_BACKUPS = 3
#: Completions remembered for the log, by count and by their total characters.
REMEMBERED_EXCHANGES = 10_000
REMEMBERED_CHARS = 50_000_000

Prompt = str | list[dict[str, str]]


@dataclass(frozen=True)
class Exchange:
    """What one completion was about: its prompt (messages or text) and the answer sent."""

    prompt: Prompt
    response: str
    model: str

    @property
    def chars(self) -> int:
        if isinstance(self.prompt, str):
            size = len(self.prompt)
        else:
            size = sum(len(m.get("content", "")) for m in self.prompt)
        return size + len(self.response)


class ExchangeMemory:
    """The most recent exchanges by completion id, bounded by count and by characters."""

    def __init__(
        self, max_items: int = REMEMBERED_EXCHANGES, max_chars: int = REMEMBERED_CHARS
    ) -> None:
        self.max_items = max_items
        self.max_chars = max_chars
        self._items: OrderedDict[str, Exchange] = OrderedDict()
        self._chars = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, ident: str, exchange: Exchange) -> None:
        if exchange.chars > self.max_chars:
            return  # larger than the whole budget: not remembered
        self._items[ident] = exchange
        self._chars += exchange.chars
        while len(self._items) > self.max_items or self._chars > self.max_chars:
            _, old = self._items.popitem(last=False)
            self._chars -= old.chars

    def get(self, ident: str) -> Exchange | None:
        return self._items.get(ident)


def record(feedback: Feedback, exchange: Exchange, now: float | None = None) -> dict[str, Any]:
    """The log line (as a dict) for ``feedback`` about ``exchange``."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))
    return {
        "v": LOG_VERSION,
        "time": stamp,
        "id": feedback.id,
        "model": exchange.model,
        "prompt": exchange.prompt,
        "response": exchange.response,
        "rating": feedback.rating,
        "score": feedback.score,
        "correction": feedback.correction,
    }


class FeedbackLog:
    """Appends JSON lines to ``path``, size-bounded by rotation; thread-safe."""

    def __init__(
        self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS
    ) -> None:
        if max_bytes < 1024:
            raise ValueError("the feedback log's max_bytes must be at least 1024")
        if backups < 0:
            raise ValueError("the feedback log's backups must be >= 0")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.written = 0
        self.skipped = 0
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _rotate(self) -> None:
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
            return
        oldest = self.path.with_name(f"{self.path.name}.{self.backups}")
        oldest.unlink(missing_ok=True)
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.path.exists():
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def append(self, line: dict[str, Any]) -> bool:
        """Write one line; False (and counted in ``skipped``) when it alone exceeds the bound."""
        data = (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        if len(data) > self.max_bytes:
            with self._lock:
                self.skipped += 1
            return False
        with self._lock:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(data) > self.max_bytes:
                self._rotate()
            fd = self._open()
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            self.written += 1
        return True
