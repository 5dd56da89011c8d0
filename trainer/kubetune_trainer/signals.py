"""Graceful stop on SIGTERM (Kubernetes eviction/preemption) or Ctrl-C.

The handler only sets a flag; the loop checks it after every optimizer step, agrees on
it across ranks (one rank may get the signal first), writes a checkpoint and exits
with ExitCode.RETRYABLE so the operator restarts the gang, which resumes from that
checkpoint. A second Ctrl-C interrupts at once. ``KUBETUNE_STOP_AFTER_STEP`` simulates
a preemption after a given step (used by the resume tests and for drills).
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

from kubetune.contract.env import STOP_AFTER_STEP_ENV


class StopRequest:
    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._event = threading.Event()
        raw = os.environ.get(STOP_AFTER_STEP_ENV, "").strip()
        self.stop_after_step = int(raw) if raw else None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        """Put the previous handlers back (in-process runs, e.g. tests)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name
        self._event.set()
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def requested(self, step: int) -> bool:
        if self._event.is_set():
            return True
        if self.stop_after_step is not None and step >= self.stop_after_step:
            self.signal_name = f"{STOP_AFTER_STEP_ENV}={self.stop_after_step}"
            return True
        return False
