"""Fault injection, for tests and the demo only: a server that plays a bad candidate.

Off by default. With ``--inject-*`` flags the server adds latency to every request,
fails a share of them with HTTP 500 (counted as ``reason="injected"`` errors) or
replaces a share of the answers with :data:`DEGENERATE_TEXT` (an empty answer, which
the load generator's simulated users rate negatively). Decisions come from one seeded
RNG, so a run with the same seed and request order injects the same faults.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

#: What a degenerate answer is replaced with: nothing.
DEGENERATE_TEXT = ""


@dataclass(frozen=True)
class FaultSettings:
    """Fault injection settings; all zero = no faults."""

    latency_s: float = 0.0
    error_rate: float = 0.0
    degenerate_rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.latency_s < 0:
            raise ValueError("injected latency must be >= 0")
        for name in ("error_rate", "degenerate_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")

    @property
    def active(self) -> bool:
        return bool(self.latency_s or self.error_rate or self.degenerate_rate)


@dataclass(frozen=True)
class FaultDecision:
    """What to do to one request."""

    latency_s: float
    fail: bool
    degenerate: bool


class FaultInjector:
    """Draws a decision per request; thread-safe, deterministic for a seed."""

    def __init__(self, settings: FaultSettings) -> None:
        self.settings = settings
        self._rng = random.Random(settings.seed)
        self._lock = threading.Lock()

    def decide(self) -> FaultDecision:
        s = self.settings
        with self._lock:
            fail = s.error_rate > 0 and self._rng.random() < s.error_rate
            degenerate = s.degenerate_rate > 0 and self._rng.random() < s.degenerate_rate
        return FaultDecision(latency_s=s.latency_s, fail=fail, degenerate=degenerate)
