"""Per-example scores of a response against its reference; pure Python.

Every score is higher-is-better: 1.0/0.0 for the string metrics, so the mean of a set is
the share of examples that pass and the paired bootstrap works on the same footing for all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

Scorer = Callable[[str, str], float]


def exact_match(response: str, reference: str) -> float:
    """The response equals the reference, surrounding whitespace ignored."""
    return float(response.strip() == reference.strip())


def contains(response: str, reference: str) -> float:
    """The reference (stripped) occurs in the response; an empty reference always does."""
    return float(reference.strip() in response)


def regex(pattern: str) -> Scorer:
    """The response matches ``pattern`` anywhere (``re.search``); the reference is unused."""
    compiled = re.compile(pattern)
    return lambda response, _reference: float(compiled.search(response) is not None)


def valid_json(response: str, _reference: str) -> float:
    """The response (stripped) parses as one JSON document."""
    try:
        json.loads(response.strip())
    except ValueError:
        return 0.0
    return 1.0


def string_scorer(kind: str, pattern: str | None = None) -> Scorer:
    """The scorer of a string metric type (``rewardModel`` is scored by the model)."""
    if kind == "regex":
        assert pattern is not None  # the API requires it
        return regex(pattern)
    scorers: dict[str, Scorer] = {
        "exactMatch": exact_match,
        "contains": contains,
        "validJson": valid_json,
    }
    return scorers[kind]
