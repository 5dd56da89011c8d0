"""The aiohttp application: OpenAI endpoints, feedback, health and metrics.

Generation runs on one worker thread, so the event loop keeps answering ``/metrics``
and ``/health`` while the model works; requests beyond the one running wait in a
bounded queue (``vllm:num_requests_waiting``), and one more is refused with HTTP 503.
Reward scoring of sampled responses runs on a second thread after the response is
sent, so it never adds to a request's latency.

Latencies are measured from the request's arrival, as vLLM measures them: the e2e
latency ends when the response is ready, the time to first token when the first new
token exists (queueing and injected latency included in both).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubetune_trainer.serving.faults import DEGENERATE_TEXT, FaultInjector, FaultSettings
from kubetune_trainer.serving.feedback_log import (
    DEFAULT_BACKUPS,
    DEFAULT_MAX_BYTES,
    Exchange,
    ExchangeMemory,
    FeedbackLog,
    Prompt,
    record,
)
from kubetune_trainer.serving.metrics import ServingMetrics
from kubetune_trainer.serving.protocol import (
    BadRequest,
    Feedback,
    Generation,
    GenerationRequest,
    chat_response,
    completion_response,
    error_body,
    new_id,
    parse_chat,
    parse_completion,
    parse_feedback,
)
from kubetune_trainer.serving.reward import Sampler

log = logging.getLogger(__name__)

#: Completion ids remembered for feedback; older ones are still counted, as unknown.
REMEMBERED_IDS = 100_000


class Engine(Protocol):
    """What the server needs of a model (HFEngine; a fake in unit tests)."""

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str: ...

    def generate(self, request: GenerationRequest) -> Generation: ...


class Scorer(Protocol):
    """What the server needs of a reward model (RewardScorer; a fake in unit tests)."""

    def score(self, prompt: str, response: str) -> float: ...


@dataclass(frozen=True)
class ServeSettings:
    """Everything but the models: the served name, the queue bound, faults, sampling."""

    model_name: str
    max_waiting: int = 16
    faults: FaultSettings = field(default_factory=FaultSettings)
    reward_sample_rate: float = 0.0
    reward_seed: int = 0
    #: JSONL log of feedback with its prompt and response (None: feedback is only counted)
    feedback_log: Path | None = None
    feedback_log_max_bytes: int = DEFAULT_MAX_BYTES
    feedback_log_backups: int = DEFAULT_BACKUPS


Handler = Callable[[web.Request], Awaitable[web.Response]]


class ModelServer:
    """One served model: its routes, metrics, worker threads and feedback ids."""

    def __init__(
        self, engine: Engine, settings: ServeSettings, scorer: Scorer | None = None
    ) -> None:
        if settings.max_waiting < 0:
            raise ValueError("max_waiting must be >= 0")
        self.engine = engine
        self.settings = settings
        self.scorer = scorer
        self.metrics = ServingMetrics(settings.model_name)
        self.faults = FaultInjector(settings.faults)
        self.sampler = Sampler(settings.reward_sample_rate if scorer else 0.0, settings.reward_seed)
        self._generate_pool = ThreadPoolExecutor(1, thread_name_prefix="kubetune-generate")
        self._reward_pool = ThreadPoolExecutor(1, thread_name_prefix="kubetune-reward")
        self._in_flight = 0  # event-loop side count of queued + running generations
        self._issued: OrderedDict[str, None] = OrderedDict()
        self._scoring: set[asyncio.Future[None]] = set()
        self.created = int(time.time())
        self.feedback_log: FeedbackLog | None = None
        self._exchanges = ExchangeMemory()
        if settings.feedback_log is not None:
            self.feedback_log = FeedbackLog(
                settings.feedback_log,
                settings.feedback_log_max_bytes,
                settings.feedback_log_backups,
            )

    # ----- application -----------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/feedback", self._feedback)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _app: web.Application) -> None:
        await self.drain()
        self._generate_pool.shutdown(wait=False, cancel_futures=True)
        self._reward_pool.shutdown(wait=False, cancel_futures=True)

    async def drain(self) -> None:
        """Wait for pending reward scores (tests read the metrics after this)."""
        while self._scoring:
            await asyncio.gather(*list(self._scoring), return_exceptions=True)

    # ----- handlers ----------------------------------------------------------------------

    async def _completions(self, request: web.Request) -> web.Response:
        arrival = time.monotonic()
        try:
            parsed = parse_completion(await _json(request))
        except BadRequest as exc:
            return self._bad_request(exc)
        return await self._serve(arrival, parsed, chat=False, asked=parsed.prompt)

    async def _chat(self, request: web.Request) -> web.Response:
        arrival = time.monotonic()
        try:
            messages, sampling = parse_chat(await _json(request))
            prompt = _render(self.engine, messages)
        except BadRequest as exc:
            return self._bad_request(exc)
        wanted = GenerationRequest(prompt, chat=True, **sampling)
        return await self._serve(arrival, wanted, True, asked=messages)

    async def _serve(
        self, arrival: float, parsed: GenerationRequest, chat: bool, asked: Prompt
    ) -> web.Response:
        decision = self.faults.decide()
        if decision.latency_s:
            await asyncio.sleep(decision.latency_s)
        if decision.fail:
            self.metrics.error("injected")
            return _error(500, "injected fault (--inject-error-rate)", "InternalServerError")
        if self._in_flight > self.settings.max_waiting:
            self.metrics.error("overloaded")
            return _error(503, "the request queue is full", "ServiceUnavailableError")
        self._in_flight += 1
        self.metrics.waiting.inc()
        try:
            gen = await asyncio.get_running_loop().run_in_executor(
                self._generate_pool, self._generate, parsed
            )
        except BadRequest as exc:
            return self._bad_request(exc)
        except Exception:
            log.exception("generation failed")
            self.metrics.error("internal")
            return _error(500, "generation failed; see the server log", "InternalServerError")
        finally:
            self._in_flight -= 1
        if decision.degenerate:
            gen = dataclasses.replace(gen, text=DEGENERATE_TEXT, finish_reason="stop")
        done = time.monotonic()
        m = self.metrics
        m.e2e.observe(done - arrival)
        if gen.first_token_at is not None:
            m.ttft.observe(gen.first_token_at - arrival)
        m.success(gen.finish_reason)
        m.prompt_tokens.inc(gen.prompt_tokens)
        m.generation_tokens.inc(gen.completion_tokens)
        ident = new_id("chatcmpl" if chat else "cmpl")
        self._remember(ident)
        if self.feedback_log is not None:
            self._exchanges.add(ident, Exchange(asked, gen.text, self.settings.model_name))
        if self.scorer is not None and self.sampler.draw():
            self._score_later(parsed.prompt, gen.text)
        shape = chat_response if chat else completion_response
        return web.json_response(shape(ident, self.settings.model_name, gen))

    def _generate(self, parsed: GenerationRequest) -> Generation:
        """On the worker thread: the request leaves the queue and runs."""
        self.metrics.waiting.dec()
        self.metrics.running.inc()
        try:
            return self.engine.generate(parsed)
        finally:
            self.metrics.running.dec()

    def _score_later(self, prompt: str, text: str) -> None:
        scorer = self.scorer
        assert scorer is not None

        def score() -> None:
            try:
                self.metrics.reward_score(scorer.score(prompt, text))
            except Exception:
                log.exception("reward scoring failed")

        future = asyncio.get_running_loop().run_in_executor(self._reward_pool, score)
        self._scoring.add(future)
        future.add_done_callback(self._scoring.discard)

    async def _feedback(self, request: web.Request) -> web.Response:
        try:
            feedback = parse_feedback(await _json(request))
        except BadRequest as exc:
            return self._bad_request(exc)
        counted_as = feedback.model or self.settings.model_name
        if feedback.rating is not None:  # a neutral score (3) is logged, not counted
            self.metrics.feedback(feedback.rating, counted_as)
        known = feedback.id in self._issued
        body: dict[str, Any] = {
            "id": feedback.id,
            "rating": feedback.rating,
            "model": counted_as,
            "known": known,
        }
        if feedback.score is not None:
            body["score"] = feedback.score
        if self.feedback_log is not None:
            body["logged"] = await self._log_feedback(feedback)
        if not known:
            body["message"] = "counted, but this server did not issue that completion id"
        return web.json_response(body)

    async def _log_feedback(self, feedback: Feedback) -> bool:
        """Append the feedback with its exchange; False when the exchange is not
        remembered (another server's completion, or too old) or the write failed. The
        content never reaches the server's own log: failures are logged by kind only."""
        log_file = self.feedback_log
        exchange = self._exchanges.get(feedback.id)
        if log_file is None or exchange is None:
            return False
        line = record(feedback, exchange)
        try:
            return await asyncio.get_running_loop().run_in_executor(None, log_file.append, line)
        except OSError as exc:
            log.error("cannot write the feedback log: %s", type(exc).__name__)
            return False

    async def _models(self, _request: web.Request) -> web.Response:
        card = {
            "id": self.settings.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "kubetune",
        }
        return web.json_response({"object": "list", "data": [card]})

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": self.settings.model_name})

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    # ----- helpers -----------------------------------------------------------------------

    def _remember(self, ident: str) -> None:
        self._issued[ident] = None
        while len(self._issued) > REMEMBERED_IDS:
            self._issued.popitem(last=False)

    def _bad_request(self, exc: BadRequest) -> web.Response:
        self.metrics.error("bad_request")
        return _error(400, str(exc), "BadRequestError")


def _render(engine: Engine, messages: Sequence[dict[str, str]]) -> str:
    """The chat prompt; a template that refuses the messages (e.g. no system role) is a 400."""
    try:
        return engine.render_chat(messages)
    except Exception as exc:
        raise BadRequest(f"the chat template cannot render these messages: {exc}") from exc


async def _json(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise BadRequest(f"the request body is not valid JSON: {exc}") from exc


def _error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response(error_body(message, kind, status), status=status)


def run(server: ModelServer, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM (aiohttp's runner handles both and cleans up)."""
    log.info("serving %s on http://%s:%d", server.settings.model_name, host, port)
    web.run_app(server.app(), host=host, port=port, access_log=None, print=None)
