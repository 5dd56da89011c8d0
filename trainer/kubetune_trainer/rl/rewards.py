"""Verifiable rewards declared in a job spec, and the shaping and normalisation of scores.

No user code runs in the trainer: a reward is one of a few fixed checkers (exact match, a
regular expression, valid JSON, a numeric answer) configured by data. Each scores a
response in [0, 1] against the example's reference answer. Scores are then shaped (TRL's
``missing_eos_penalty``, a length penalty, clipping) and optionally normalised with running
moments (TRL 0.11's ``use_score_scaling``/``use_score_norm``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

#: characters of a response a regular expression runs against (see RegexMatch)
MAX_MATCH_CHARS = 4096


@runtime_checkable
class VerifiableReward(Protocol):
    """A deterministic checker: ``score(response, reference)`` in [0, 1]."""

    def score(self, response: str, reference: str | None) -> float: ...


def _require(reference: str | None, what: str) -> str:
    if reference is None:
        raise ValueError(f"{what} needs a reference answer")
    return reference


@dataclass(frozen=True)
class ExactMatch:
    """1.0 when the response equals the reference; normalised by default.

    Normalising (strip, collapse whitespace, casefold) stops a trailing newline or a
    capital letter from costing the whole reward.
    """

    normalize: bool = True

    def _norm(self, text: str) -> str:
        return " ".join(text.split()).casefold() if self.normalize else text

    def score(self, response: str, reference: str | None) -> float:
        reference = _require(reference, "ExactMatch")
        return float(self._norm(response) == self._norm(reference))


@dataclass(frozen=True)
class RegexMatch:
    """1.0 when ``pattern`` is found in the response (or matches all of it: ``full_match``).

    Python's ``re`` has no timeout, so a catastrophic pattern cannot be interrupted: the API
    layer bounds pattern length, and here the pattern runs against at most ``max_chars``
    characters of the response, the last ones since answers end a completion. A longer
    response never full-matches, as a match of a truncated text would be wrong.
    """

    pattern: str
    full_match: bool = False
    max_chars: int = MAX_MATCH_CHARS
    _compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            compiled = re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {self.pattern!r}: {exc}") from exc
        object.__setattr__(self, "_compiled", compiled)

    def score(self, response: str, reference: str | None) -> float:
        if self.full_match:
            if len(response) > self.max_chars:
                return 0.0
            return float(self._compiled.fullmatch(response) is not None)
        return float(self._compiled.search(response[-self.max_chars :]) is not None)


_FENCE = re.compile(r"\A\s*```[\w-]*\s*(?P<body>.*?)\s*```\s*\Z", re.DOTALL)


@dataclass(frozen=True)
class ValidJson:
    """1.0 when the response is a JSON object holding ``required_keys``.

    A response that is one Markdown code block (```` ```json ... ``` ````) is unwrapped
    first: chat models fence JSON out of habit, and the content is what is being checked.
    """

    required_keys: tuple[str, ...] = ()

    def score(self, response: str, reference: str | None) -> float:
        fenced = _FENCE.match(response)
        text = fenced.group("body") if fenced else response
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            return 0.0
        if not isinstance(parsed, dict):
            return 0.0
        return float(all(key in parsed for key in self.required_keys))


# A sign not glued to a preceding word (so "5-3" reads 3), an integer with optional
# thousands separators, optional decimals, and an optional "/denominator".
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-+\u2212])?"
    r"(?P<num>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:/(?P<den>\d+(?:\.\d+)?))?"
)


def last_number(text: str) -> float | None:
    """The last number in ``text`` ("1,234.5", "-3/4" -> -0.75); None when there is none.

    The last one because reasoning traces state intermediate numbers before the answer.
    A fraction with a zero denominator counts as no number.
    """
    matches = list(_NUMBER.finditer(text))
    if not matches:
        return None
    found = matches[-1]
    value = float(found.group("num").replace(",", ""))
    if found.group("den") is not None:
        den = float(found.group("den"))
        if den == 0.0:
            return None
        value /= den
    return -value if found.group("sign") in ("-", "\u2212") else value


@dataclass(frozen=True)
class NumericAnswer:
    """1.0 when the last number of the response equals the reference's within tolerance.

    ``relative`` compares ``|a - b| <= tolerance * max(|a|, |b|)`` (``math.isclose``),
    otherwise ``|a - b| <= tolerance``. A response without a number scores 0.0; a
    reference without one is a dataset error and raises.
    """

    tolerance: float = 1e-6
    relative: bool = False

    def score(self, response: str, reference: str | None) -> float:
        expected = last_number(_require(reference, "NumericAnswer"))
        if expected is None:
            raise ValueError(f"reference {reference!r} holds no number")
        got = last_number(response)
        if got is None:
            return 0.0
        if self.relative:
            return float(math.isclose(got, expected, rel_tol=self.tolerance, abs_tol=0.0))
        return float(abs(got - expected) <= self.tolerance)


def shaped_scores(
    scores: torch.Tensor,
    response_lengths: torch.Tensor,
    ended_with_eos: torch.Tensor,
    *,
    missing_eos_penalty: float | None = None,
    length_penalty: float = 0.0,
    target_length: int | None = None,
    clip: float | None = None,
) -> torch.Tensor:
    """Scores after penalties, in this order: missing EOS, length, clipping to +-clip.

    ``missing_eos_penalty`` is subtracted from rows that did not end with EOS (TRL), so
    truncated rambling scores below a finished answer; ``length_penalty`` is subtracted
    per token beyond ``target_length``. Returns a new tensor.
    """
    out = scores.float().clone()
    if missing_eos_penalty is not None:
        out = out - missing_eos_penalty * (~ended_with_eos.bool()).to(out.dtype)
    if length_penalty:
        if target_length is None:
            raise ValueError("length_penalty needs target_length")
        excess = (response_lengths.to(out.dtype) - target_length).clamp(min=0.0)
        out = out - length_penalty * excess
    if clip is not None:
        out = out.clamp(-clip, clip)
    return out


class RunningMoments:
    """Mean and standard deviation of every score seen so far, updated batch by batch.

    The parallel-variance (Chan et al.) form of Welford's algorithm, as TRL 0.11's
    ``RunningMoments``: merging a batch's moments is exact, not an exponential average, so
    the statistics equal those of all data concatenated. ``std`` is the unbiased one.
    """

    def __init__(self) -> None:
        self.mean = 0.0
        self.var = 0.0  # biased (population) variance of all data seen
        self.count = 0

    @property
    def std(self) -> float:
        if self.count < 2:
            return 1.0  # TRL's initial value: scaling by it is a no-op
        return math.sqrt(self.var * self.count / (self.count - 1))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> tuple[float, float]:
        """Merge a batch; returns its own mean and unbiased std (NaN std for one value)."""
        n = x.numel()
        if n == 0:
            return math.nan, math.nan
        batch_var, batch_mean = torch.var_mean(x.detach().double(), correction=0)
        b_mean, b_var = float(batch_mean), float(batch_var)
        total = self.count + n
        delta = b_mean - self.mean
        m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.count = total
        batch_std = math.sqrt(b_var * n / (n - 1)) if n > 1 else math.nan
        return b_mean, batch_std

    def state_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.mean = float(state["mean"])
        self.var = float(state["var"])
        self.count = int(state["count"])


def normalize_scores(
    scores: torch.Tensor, moments: RunningMoments, *, center: bool = True
) -> torch.Tensor:
    """``(scores - mean) / (std + eps)`` with the running moments (TRL's score scaling).

    ``center=False`` only divides (``use_score_scaling`` without ``use_score_norm``).
    Does not update ``moments``: call ``moments.update(scores)`` first, as TRL does.
    """
    eps = torch.finfo(scores.dtype).eps if scores.is_floating_point() else 1e-8
    out = scores - moments.mean if center else scores
    return out / (moments.std + eps)
