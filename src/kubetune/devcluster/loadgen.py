"""A load generator with simulated users, for rollout tests and the local demo.

It sends OpenAI completion requests to one URL (the weighted router in front of the
model servers) at a target rate, fixed or Poisson, for a duration or a count, with at
most ``concurrency`` requests in flight (a request that is due while the bound is
reached waits for a slot, so an overloaded target lowers the achieved rate rather than
piling up requests).

Simulated users: after every answer, a user posts a rating to ``/v1/feedback`` at the
same URL. A non-degenerate answer satisfies the user with probability
``satisfied_rate``; a degenerate one (empty or whitespace only: what the server's
``--inject-degenerate-rate`` fault returns) never does. This is a SIMULATION for tests
and the demo; real feedback comes from the product's users. The feedback body names the
model that answered (the response's ``model``), and the server counts it under that
name, so the counts stay right when the router sends the feedback to another backend.

Pure aiohttp, no torch: the dev tooling layer stays light.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp

Arrival = Literal["poisson", "fixed"]

DEFAULT_PROMPTS: tuple[str, ...] = (
    "How do I reset my password?",
    "Where is my order?",
    "Write a python function that returns the sum of a list.",
    "What is a kubernetes pod?",
    "Summarise: the job failed because the node ran out of memory.",
    "Can I get a refund for my last invoice?",
    "Explain what a learning rate is in one sentence.",
    "Translate 'hello world' into French.",
)


def is_degenerate(text: str) -> bool:
    """An answer no user is satisfied with: empty or only whitespace."""
    return not text.strip()


def load_prompts(path: Path) -> list[str]:
    """Prompts from a JSONL file: a ``prompt`` (or ``text``) string per line."""
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        value = row.get("prompt", row.get("text")) if isinstance(row, dict) else None
        if not isinstance(value, str):
            raise ValueError(f"{path}:{number}: each line needs a string 'prompt' (or 'text')")
        prompts.append(value)
    if not prompts:
        raise ValueError(f"{path} has no prompts")
    return prompts


@dataclass(frozen=True)
class ResponseRecord:
    """One request's outcome, handed to ``on_response``."""

    model: str | None  # the model that answered; None on errors
    status: int  # HTTP status; 0 when no response came back
    latency_s: float
    text: str | None = None
    rating: str | None = None  # the simulated user's feedback, if it was delivered
    error: str | None = None
    id: str | None = None  # the completion id


@dataclass
class ModelStats:
    """Counts and latencies of the answers of one model."""

    responses: int = 0
    degenerate: int = 0
    positive: int = 0
    negative: int = 0
    latencies: list[float] = field(default_factory=list)

    def latency_percentile(self, q: float) -> float | None:
        return percentile(self.latencies, q)


@dataclass
class LoadReport:
    """What a load run did: per-model counts, errors by reason, latency percentiles."""

    sent: int = 0
    duration_s: float = 0.0
    models: dict[str, ModelStats] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    feedback_sent: int = 0
    feedback_errors: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def succeeded(self) -> int:
        return sum(stats.responses for stats in self.models.values())

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def achieved_rate(self) -> float:
        return self.sent / self.duration_s if self.duration_s > 0 else 0.0

    def latency_percentile(self, q: float) -> float | None:
        return percentile(self.latencies, q)

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (the CLI's ``--json``)."""

        def pct(values: list[float]) -> dict[str, float | None]:
            return {f"p{q}": percentile(values, q / 100) for q in (50, 95, 99)}

        return {
            "sent": self.sent,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "duration_s": round(self.duration_s, 3),
            "achieved_rate": round(self.achieved_rate, 3),
            "errors": dict(self.errors),
            "feedback_sent": self.feedback_sent,
            "feedback_errors": self.feedback_errors,
            "latency_s": pct(self.latencies),
            "models": {
                name: {
                    "responses": s.responses,
                    "degenerate": s.degenerate,
                    "positive": s.positive,
                    "negative": s.negative,
                    "latency_s": pct(s.latencies),
                }
                for name, s in sorted(self.models.items())
            },
        }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile (0..1); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))
    return ordered[rank - 1]


def _arrival_times(rate: float, arrival: Arrival, rng: random.Random) -> Any:
    """Offsets (seconds from the start) of the requests: fixed spacing or Poisson."""
    t, index = 0.0, 0
    while True:
        yield t
        index += 1
        # fixed: index / rate, not a running sum, so float error never adds a request
        t = t + rng.expovariate(rate) if arrival == "poisson" else index / rate


async def run_load(
    url: str,
    rate: float,
    duration_s: float | None = None,
    *,
    count: int | None = None,
    concurrency: int = 8,
    arrival: Arrival = "poisson",
    prompts: Sequence[str] | None = None,
    max_tokens: int = 16,
    temperature: float = 0.0,
    model: str | None = None,
    satisfied_rate: float = 0.8,
    feedback: bool = True,
    seed: int = 0,
    timeout_s: float = 30.0,
    on_response: Callable[[ResponseRecord], None] | None = None,
) -> LoadReport:
    """Send completions to ``url`` (the server or router base URL) and rate the answers.

    Stops after ``duration_s`` seconds of sending or ``count`` requests, whichever
    comes first (at least one of them is required), then waits for the requests in
    flight. ``model`` is sent as the request's ``model`` (routers may route on it).
    """
    if rate <= 0:
        raise ValueError("rate must be > 0 requests/s")
    if duration_s is None and count is None:
        raise ValueError("give a duration, a count or both")
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    if not 0.0 <= satisfied_rate <= 1.0:
        raise ValueError("satisfied_rate must be between 0 and 1")
    pool = list(prompts or DEFAULT_PROMPTS)
    base = url.rstrip("/")
    rng = random.Random(seed)
    report = LoadReport()
    slots = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task[None]] = set()
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    start = time.monotonic()

    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(prompt: str, satisfied_draw: float) -> None:
            try:
                record = await _request(session, base, prompt, max_tokens, temperature, model)
                if record.model is not None and feedback:
                    text = record.text or ""
                    good = not is_degenerate(text) and satisfied_draw < satisfied_rate
                    rating = "positive" if good else "negative"
                    record = await _feedback(session, base, record, rating, report)
                _account(report, record)
                if on_response is not None:
                    on_response(record)
            finally:
                slots.release()

        for offset in _arrival_times(rate, arrival, rng):
            if count is not None and report.sent >= count:
                break
            if duration_s is not None and offset >= duration_s:
                break
            delay = start + offset - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            prompt = pool[rng.randrange(len(pool))]
            task = asyncio.create_task(one(prompt, rng.random()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            report.sent += 1
        if tasks:
            await asyncio.gather(*list(tasks))
    report.duration_s = time.monotonic() - start
    return report


async def _request(
    session: aiohttp.ClientSession,
    base: str,
    prompt: str,
    max_tokens: int,
    temperature: float,
    model: str | None,
) -> ResponseRecord:
    body: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature}
    if model:
        body["model"] = model
    sent = time.monotonic()
    try:
        async with session.post(f"{base}/v1/completions", json=body) as resp:
            if resp.status != 200:
                await resp.read()
                latency = time.monotonic() - sent
                return ResponseRecord(None, resp.status, latency, error=f"http_{resp.status}")
            payload: Any = await resp.json(content_type=None)
            latency = time.monotonic() - sent
    except TimeoutError:
        return ResponseRecord(None, 0, time.monotonic() - sent, error="timeout")
    except (aiohttp.ClientError, ValueError) as exc:
        return ResponseRecord(None, 0, time.monotonic() - sent, error=type(exc).__name__)
    try:
        text = str(payload["choices"][0]["text"])
        answered_by = str(payload["model"])
        ident = str(payload["id"])
    except (KeyError, IndexError, TypeError):
        return ResponseRecord(None, 200, latency, error="malformed_response")
    return ResponseRecord(answered_by, 200, latency, text=text, id=ident)


async def _feedback(
    session: aiohttp.ClientSession,
    base: str,
    record: ResponseRecord,
    rating: str,
    report: LoadReport,
) -> ResponseRecord:
    body = {"id": record.id, "rating": rating, "model": record.model}
    report.feedback_sent += 1
    try:
        async with session.post(f"{base}/v1/feedback", json=body) as resp:
            await resp.read()
            if resp.status != 200:
                report.feedback_errors += 1
                return record
    except (TimeoutError, aiohttp.ClientError):
        report.feedback_errors += 1
        return record
    return dataclasses.replace(record, rating=rating)


def _account(report: LoadReport, record: ResponseRecord) -> None:
    if record.model is None:
        reason = record.error or "unknown"
        report.errors[reason] = report.errors.get(reason, 0) + 1
        return
    stats = report.models.setdefault(record.model, ModelStats())
    stats.responses += 1
    stats.latencies.append(record.latency_s)
    report.latencies.append(record.latency_s)
    if is_degenerate(record.text or ""):
        stats.degenerate += 1
    if record.rating == "positive":
        stats.positive += 1
    elif record.rating == "negative":
        stats.negative += 1
