"""PromQL templates of a ModelRollout: substitute the placeholders, or say what is wrong.

Part of the API (not the operator): the placeholders are a contract users write against,
and validation and the controller both use it.

The placeholders are those of :data:`kubetune.api.rollout.QUERY_PLACEHOLDERS`. Values are
inserted as text, so each one is made safe for where it normally stands: the model name and
namespace sit inside label matchers (``model_name="${model}"``) and are escaped as PromQL
string literals; durations are whole seconds (``90s``), the one duration syntax every
Prometheus version parses. An unknown placeholder is an error, never left in the query:
Prometheus would answer with a parse error at every interval, so :func:`check_query` lets
validation refuse the manifest up front.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

from kubetune.api.rollout import QUERY_PLACEHOLDERS, AnalysisSpec

_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_KNOWN = frozenset(name[2:-1] for name in QUERY_PLACEHOLDERS)


class QueryTemplateError(ValueError):
    """A query names a placeholder that does not exist (or leaves one unterminated)."""


def check_query(text: str) -> list[str]:
    """Problems with one query template, empty when it can be rendered."""
    problems = [
        f"unknown placeholder ${{{name}}} (known: {', '.join(sorted(QUERY_PLACEHOLDERS))})"
        for name in dict.fromkeys(_PLACEHOLDER.findall(text))
        if name not in _KNOWN
    ]
    rest = _PLACEHOLDER.sub("", text)
    if "${" in rest:
        problems.append("unterminated placeholder: '${' without a closing '}'")
    return problems


def _queries(spec: AnalysisSpec) -> Iterator[tuple[str, str]]:
    """(field path, query) of every query in the analysis."""
    for i, metric in enumerate(spec.metrics):
        path = f"spec.analysis.metrics[{i}]"
        yield f"{path}.query", metric.query or ""
        yield f"{path}.samplesQuery", metric.samples_query or ""
        seq = metric.sequential
        if seq is not None:
            for field, text in (
                ("successQuery", seq.success_query),
                ("totalQuery", seq.total_query),
                ("sumQuery", seq.sum_query),
                ("countQuery", seq.count_query),
                ("sumOfSquaresQuery", seq.sum_of_squares_query),
            ):
                yield f"{path}.sequential.{field}", text or ""


def check_analysis(spec: AnalysisSpec) -> list[str]:
    """``path: problem`` for every query of the analysis that cannot be rendered."""
    return [f"{path}: {problem}" for path, text in _queries(spec) for problem in check_query(text)]


def promql_string(value: str) -> str:
    """``value`` escaped for the inside of a double-quoted PromQL string literal."""
    out = value.replace("\\", "\\\\").replace('"', '\\"')
    return out.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def promql_duration(seconds: float) -> str:
    """Whole seconds, rounded up and at least one: ``90s``."""
    if not math.isfinite(seconds):
        raise ValueError(f"duration must be finite, got {seconds}")
    return f"{max(1, math.ceil(seconds))}s"


def render(
    text: str,
    *,
    model: str,
    namespace: str,
    interval_seconds: float,
    window_seconds: float,
) -> str:
    """The query with every placeholder substituted; raises :class:`QueryTemplateError`.

    ``${window}`` is at least the interval: a window shorter than one scrape-aligned
    interval would make ``increase()`` extrapolate from almost nothing.
    """
    problems = check_query(text)
    if problems:
        raise QueryTemplateError("; ".join(problems))
    values = {
        "model": promql_string(model),
        "namespace": promql_string(namespace),
        "interval": promql_duration(interval_seconds),
        "window": promql_duration(max(window_seconds, interval_seconds)),
    }
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)
