"""The OpenAI request subset the server accepts, validated, and its response shapes.

Only what tests and the demo need: non-streaming completions and chat completions with
``max_tokens``, ``temperature`` (0 = greedy), ``seed`` and ``stop``. Anything else a
client sends is ignored, as vLLM ignores unknown sampling fields; a malformed value of a
known field is a 400 with a message naming the field. The request's ``model`` is not
checked: behind a weighted router either backend may answer a request, and the
response's ``model`` says which did.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

MAX_TOKENS_LIMIT = 4096
DEFAULT_MAX_TOKENS = 16
MAX_PROMPT_CHARS = 200_000
MAX_STOP_SEQUENCES = 4
#: A model name in a feedback body becomes a Prometheus label value: keep it short and tame.
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")

Rating = Literal["positive", "negative"]
FinishReason = Literal["stop", "length"]


class BadRequest(ValueError):
    """A client error: answered with HTTP 400 and this message."""


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate: the prompt text (chat already rendered) and sampling settings."""

    prompt: str
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    chat: bool = False


@dataclass(frozen=True)
class Generation:
    """The model's answer and what it cost.

    ``first_token_at`` is the ``time.monotonic()`` at which the first new token existed
    (None when none was generated), the end of vLLM's time to first token.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    first_token_at: float | None = None


@dataclass(frozen=True)
class Feedback:
    """A user's judgement of one completion, counted under ``model`` when the body names it.

    ``rating`` is the thumb the metrics count: given as such, derived from a 1-5 ``score``
    (4-5 positive, 1-2 negative, 3 neutral: None, not counted), or negative when the user
    only sent a ``correction`` (a corrected answer says the original was wrong).
    """

    id: str
    rating: Rating | None
    model: str | None
    score: int | None = None
    correction: str | None = None


#: 1-5 scores at or above this count as positive, at or below NEGATIVE_SCORE as negative.
POSITIVE_SCORE = 4
NEGATIVE_SCORE = 2
#: A correction is an answer: bounded like one.
MAX_CORRECTION_CHARS = 20_000


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _int(body: dict[str, Any], key: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{key} must be an integer")
    if not low <= value <= high:
        raise BadRequest(f"{key} must be between {low} and {high}")
    return value


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    max_tokens = _int(body, "max_tokens", DEFAULT_MAX_TOKENS, 1, MAX_TOKENS_LIMIT)
    seed = _int(body, "seed", None, -(2**63), 2**63 - 1)
    temperature = body.get("temperature", 0.0)
    if temperature is None:
        temperature = 0.0
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise BadRequest("temperature must be a number")
    if not 0.0 <= float(temperature) <= 2.0:
        raise BadRequest("temperature must be between 0 and 2")
    if body.get("stream"):
        raise BadRequest("stream is not supported by this server; send stream: false")
    n = body.get("n", 1)
    if n != 1:
        raise BadRequest("n must be 1")
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,) if stop else ()
    elif isinstance(stop, list) and all(isinstance(s, str) and s for s in stop):
        stops = tuple(stop)
    else:
        raise BadRequest("stop must be a non-empty string or a list of them")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise BadRequest(f"stop takes at most {MAX_STOP_SEQUENCES} sequences")
    return {
        "max_tokens": max_tokens,
        "temperature": float(temperature),
        "seed": seed,
        "stop": stops,
    }


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a string")
    if len(value) > MAX_PROMPT_CHARS:
        raise BadRequest(f"{what} is longer than {MAX_PROMPT_CHARS} characters")
    return value


def parse_completion(body: Any) -> GenerationRequest:
    """A ``/v1/completions`` body; ``prompt`` is a string (or a list of exactly one)."""
    body = _object(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if prompt is None:
        raise BadRequest("prompt is required")
    return GenerationRequest(prompt=_text(prompt, "prompt"), **_sampling(body))


def parse_chat(body: Any) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """A ``/v1/chat/completions`` body: the messages and the sampling settings."""
    body = _object(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    parsed = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}] must be an object")
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise BadRequest(f"messages[{i}].role must be system, user or assistant")
        parsed.append(
            {"role": role, "content": _text(message.get("content"), f"messages[{i}].content")}
        )
    return parsed, _sampling(body)


def parse_feedback(body: Any) -> Feedback:
    """A ``/v1/feedback`` body: ``{"id", "rating"?, "score"?, "correction"?, "model"?}``.

    ``rating`` is ``"positive"`` or ``"negative"`` (a thumb) or an integer 1-5 (the same as
    ``score``); ``correction`` is the answer the user wanted. At least one of them is
    required; a thumb that contradicts a score is refused rather than guessed.
    """
    body = _object(body)
    ident = body.get("id")
    if not isinstance(ident, str) or not 0 < len(ident) <= 128:
        raise BadRequest("id must be a non-empty string of at most 128 characters")
    rating = body.get("rating")
    score = body.get("score")
    if isinstance(rating, int) and not isinstance(rating, bool):
        if score is not None and score != rating:
            raise BadRequest("rating and score disagree; send one of them")
        rating, score = None, rating
    if rating is not None and rating not in ("positive", "negative"):
        raise BadRequest('rating must be "positive", "negative" or an integer score 1-5')
    if score is not None and (isinstance(score, bool) or not isinstance(score, int)):
        raise BadRequest("score must be an integer from 1 to 5")
    if score is not None and not 1 <= score <= 5:
        raise BadRequest("score must be an integer from 1 to 5")
    correction = body.get("correction")
    if correction is not None:
        if not isinstance(correction, str) or not correction.strip():
            raise BadRequest("correction must be a non-empty string")
        if len(correction) > MAX_CORRECTION_CHARS:
            raise BadRequest(f"correction is longer than {MAX_CORRECTION_CHARS} characters")
    if rating is None and score is None and correction is None:
        raise BadRequest('rating ("positive"/"negative" or 1-5), score or correction is required')
    thumb: Rating | None = rating
    if score is not None:
        derived: Rating | None = (
            "positive"
            if score >= POSITIVE_SCORE
            else "negative"
            if score <= NEGATIVE_SCORE
            else None
        )
        if rating is not None and derived is not None and rating != derived:
            raise BadRequest(f"rating {rating!r} contradicts score {score}")
        thumb = rating or derived
    elif thumb is None:  # only a correction: the answer was wrong
        thumb = "negative"
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not MODEL_NAME_PATTERN.match(model)):
        raise BadRequest(
            "model must be a served model name: 1-128 characters of letters, digits and ._:/@+-"
        )
    return Feedback(id=ident, rating=thumb, model=model, score=score, correction=correction)


def new_id(prefix: str) -> str:
    """An OpenAI-style response id (``cmpl-…``, ``chatcmpl-…``)."""
    return f"{prefix}-{uuid.uuid4().hex}"


def _usage(gen: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
    }


def completion_response(ident: str, model: str, gen: Generation) -> dict[str, Any]:
    """The OpenAI ``text_completion`` object."""
    return {
        "id": ident,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "text": gen.text, "logprobs": None, "finish_reason": gen.finish_reason}
        ],
        "usage": _usage(gen),
    }


def chat_response(ident: str, model: str, gen: Generation) -> dict[str, Any]:
    """The OpenAI ``chat.completion`` object."""
    return {
        "id": ident,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": gen.text},
                "finish_reason": gen.finish_reason,
            }
        ],
        "usage": _usage(gen),
    }


def error_body(message: str, kind: str, code: int) -> dict[str, Any]:
    """The OpenAI error object (vLLM answers errors in this shape too)."""
    return {"error": {"message": message, "type": kind, "code": code}}
