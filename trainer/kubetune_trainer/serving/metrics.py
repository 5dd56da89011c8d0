"""The server's Prometheus metrics: vLLM's names and labels, plus three of kubetune's own.

vLLM (v1 engine) labels every metric with ``model_name`` (the served model name) and
``engine`` (the engine index); this server has one engine, ``"0"``. Counters are
declared without ``_total``: prometheus-client appends it, so ``vllm:request_success``
is exposed as ``vllm:request_success_total`` exactly as vLLM's is.

Histogram buckets are vLLM's boundaries plus finer ones below vLLM's first: a tiny model
on a CPU answers in tens of milliseconds, and quantiles computed from a single bucket
would hide an injected latency. Queries never name bucket bounds, so the superset keeps
every query portable.

kubetune's additions, with the reasons vLLM has no equivalent:
- ``kubetune_serve_request_errors_total{reason}``: vLLM counts only finished requests
  (``request_success``); failed ones appear only in the HTTP layer's metrics, which this
  server does not have, so an error rate needs its own counter.
- ``kubetune_serve_feedback_total{rating}``: user feedback, a quality signal vLLM lacks.
- reward-model scores of sampled responses: ``kubetune_serve_reward_score`` (histogram),
  ``kubetune_serve_reward_score_positive_total`` and ``..._negative_total`` (sums of the
  positive parts and of the magnitudes of the negative parts) and
  ``kubetune_serve_reward_score_squared_total`` (sum of squares). Scores can be negative,
  and a histogram with negative buckets has no ``_sum`` (OpenMetrics; prometheus-client
  drops it) because a decreasing sum breaks ``rate()``; the two monotonic halves give the
  mean as ``(positive - negative) / count`` and, with the squares, the variance a
  sequential test needs to bound the mean.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

# The *_created series add one series per counter and histogram for no use in queries.
disable_created_metrics()

ENGINE = "0"
VLLM_LABELS = ("model_name", "engine")

E2E_LATENCY = "vllm:e2e_request_latency_seconds"
TTFT = "vllm:time_to_first_token_seconds"
REQUEST_SUCCESS = "vllm:request_success"
PROMPT_TOKENS = "vllm:prompt_tokens"
GENERATION_TOKENS = "vllm:generation_tokens"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
ERRORS = "kubetune_serve_request_errors"
FEEDBACK = "kubetune_serve_feedback"
REWARD = "kubetune_serve_reward_score"
REWARD_POSITIVE = "kubetune_serve_reward_score_positive"
REWARD_NEGATIVE = "kubetune_serve_reward_score_negative"
REWARD_SQUARED = "kubetune_serve_reward_score_squared"

_FINE = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2)
E2E_BUCKETS = (
    *_FINE,
    *(0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0),
    *(120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0),
)
TTFT_BUCKETS = (
    *(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0),
    *(7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0),
)
REWARD_BUCKETS = (-8.0, -4.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

#: Error reasons: ``injected`` (fault injection), ``internal`` (generation raised),
#: ``overloaded`` (queue full, HTTP 503), ``bad_request`` (HTTP 400).
ERROR_REASONS = ("injected", "internal", "overloaded", "bad_request")


class ServingMetrics:
    """Every collector of one server, in its own registry, bound to its model name."""

    def __init__(self, model_name: str, registry: CollectorRegistry | None = None) -> None:
        self.model_name = model_name
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.e2e = Histogram(
            E2E_LATENCY,
            "Histogram of e2e request latency in seconds.",
            VLLM_LABELS,
            buckets=E2E_BUCKETS,
            registry=r,
        ).labels(model_name, ENGINE)
        self.ttft = Histogram(
            TTFT,
            "Histogram of time to first token in seconds (arrival to first generated token).",
            VLLM_LABELS,
            buckets=TTFT_BUCKETS,
            registry=r,
        ).labels(model_name, ENGINE)
        self._success = Counter(
            REQUEST_SUCCESS,
            "Count of successfully processed requests.",
            (*VLLM_LABELS, "finished_reason"),
            registry=r,
        )
        self.prompt_tokens = Counter(
            PROMPT_TOKENS, "Number of prefill tokens processed.", VLLM_LABELS, registry=r
        ).labels(model_name, ENGINE)
        self.generation_tokens = Counter(
            GENERATION_TOKENS, "Number of generation tokens processed.", VLLM_LABELS, registry=r
        ).labels(model_name, ENGINE)
        self.running = Gauge(
            RUNNING, "Number of requests in model execution batches.", VLLM_LABELS, registry=r
        ).labels(model_name, ENGINE)
        self.waiting = Gauge(
            WAITING, "Number of requests waiting to be processed.", VLLM_LABELS, registry=r
        ).labels(model_name, ENGINE)
        self._errors = Counter(
            ERRORS,
            "Requests that failed, by reason (vLLM has no error counter).",
            ("model_name", "reason"),
            registry=r,
        )
        self._feedback = Counter(
            FEEDBACK,
            "User feedback on completions, by rating.",
            ("model_name", "rating"),
            registry=r,
        )
        self.reward = Histogram(
            REWARD,
            "Reward-model scores of sampled responses.",
            ("model_name",),
            buckets=REWARD_BUCKETS,
            registry=r,
        ).labels(model_name)
        self.reward_positive = Counter(
            REWARD_POSITIVE,
            "Sum of the positive reward-model scores of sampled responses.",
            ("model_name",),
            registry=r,
        ).labels(model_name)
        self.reward_negative = Counter(
            REWARD_NEGATIVE,
            "Sum of the magnitudes of the negative reward-model scores of sampled responses.",
            ("model_name",),
            registry=r,
        ).labels(model_name)
        self.reward_squared = Counter(
            REWARD_SQUARED,
            "Sum of squared reward-model scores of sampled responses (for their variance).",
            ("model_name",),
            registry=r,
        ).labels(model_name)
        # Series exist from the start, at 0, so rate() sees the first increment.
        for reason in ("stop", "length"):
            self._success.labels(model_name, ENGINE, reason)
        for reason in ERROR_REASONS:
            self._errors.labels(model_name, reason)
        for rating in ("positive", "negative"):
            self._feedback.labels(model_name, rating)

    def success(self, finish_reason: str) -> None:
        self._success.labels(self.model_name, ENGINE, finish_reason).inc()

    def error(self, reason: str) -> None:
        self._errors.labels(self.model_name, reason).inc()

    def feedback(self, rating: str, model_name: str | None = None) -> None:
        """Count a rating under ``model_name`` (the model that answered) or this server's."""
        self._feedback.labels(model_name or self.model_name, rating).inc()

    def reward_score(self, score: float) -> None:
        self.reward.observe(score)
        if score >= 0:
            self.reward_positive.inc(score)
        else:
            self.reward_negative.inc(-score)
        self.reward_squared.inc(score * score)
