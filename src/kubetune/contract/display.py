"""How the figures of the trainer's documents are shown to people.

The CLI, the model card and status messages print the same numbers: counts as integers
(``tokens 591``, not ``591.0000``), other values with four significant digits, and
durations in human units. JSON keeps full precision; only the rendering is rounded.
"""

from __future__ import annotations

import math


def number(value: object) -> str:
    """A count as an integer with thousands separators, any other float with 4 significant
    digits; NaN as ``n/a``; anything else as ``str``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        if abs(value) >= 1e4:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    return f"{value:,}"


def duration(seconds: float | int | None) -> str:
    """``0.42 s``, ``8.7 s``, ``2 min 05 s``, ``1 h 03 min``: the precision a reader needs."""
    if seconds is None or (isinstance(seconds, float) and not math.isfinite(seconds)):
        return "n/a"
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


#: rows of an evaluation set shown side by side (CLI and model card)
BEFORE_AFTER_ROWS = 6


def prompt_text(prompt: str) -> str:
    """What a person typed: the last user turn of a ChatML-rendered prompt, else the prompt."""
    if "<|im_start|>user\n" in prompt:
        prompt = prompt.rsplit("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    return " ".join(prompt.split())


def answer_text(response: str) -> str:
    """A generated answer on one line (empty as an em dash, so a table cell never vanishes)."""
    return " ".join(response.split()) or "—"
