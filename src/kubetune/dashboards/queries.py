"""The PromQL of every dashboard panel, ready to send to a real Prometheus.

Grafana fills in template variables before it queries; tests that evaluate the panels
(and ``promtool``, which knows nothing of Grafana) need the same done here. Works on the
dashboard JSON alone, so it needs neither Grafana nor the SDK.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

#: Grafana's built-in interval variables, with values that suit a short test run.
DEFAULT_RATE_INTERVAL = "1m"
DEFAULT_INTERVAL = "30s"
DEFAULT_RANGE = "1h"

# ${name}, ${name:format} or $name (Grafana's variable syntaxes; [[name]] is deprecated
# and unused here).
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


class PanelQuery(NamedTuple):
    """One target of one panel, with the template variables substituted."""

    dashboard_uid: str
    panel_title: str
    expr: str
    legend: str


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` with every ``$name`` / ``${name}`` replaced by ``values[name]``.

    Raises ``KeyError`` naming a variable that has no value: a query that still holds a
    ``$`` would be a syntax error in Prometheus, reported far from its cause.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no value for template variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Panels in reading order, including those inside (collapsed) rows."""
    for panel in panels:
        if panel.get("type") == "row":
            yield from _panels(panel.get("panels") or [])
        else:
            yield panel


def iter_panel_queries(
    dashboard_json: Mapping[str, Any],
    *,
    namespace: str = "default",
    finetunejob: str = "",
    modelrollout: str = "",
    rate_interval: str = DEFAULT_RATE_INTERVAL,
    interval: str = DEFAULT_INTERVAL,
    range_: str = DEFAULT_RANGE,
    variables: Mapping[str, str] | None = None,
) -> Iterator[PanelQuery]:
    """Every visible Prometheus target of ``dashboard_json`` (the dashboard dict), with
    ``$namespace``, ``$finetunejob``, ``$modelrollout``, ``$__rate_interval``,
    ``$__interval`` and ``$__range`` filled in; ``variables`` adds or overrides values (for example
    ``{"namespace": "team-a|team-b"}`` for a multi-value ``=~`` match).

    Values are substituted verbatim, as Grafana does for a single-value variable; a
    namespace used in ``=~`` matchers is a regular expression, so a plain name works for
    both ``=`` and ``=~``.
    """
    values = {
        "namespace": namespace,
        "finetunejob": finetunejob,
        "modelrollout": modelrollout,
        "__rate_interval": rate_interval,
        "__interval": interval,
        "__range": range_,
        **(variables or {}),
    }
    uid = str(dashboard_json.get("uid", ""))
    for panel in _panels(list(dashboard_json.get("panels") or [])):
        for target in panel.get("targets") or []:
            if target.get("hide") or not target.get("expr"):
                continue
            legend = target.get("legendFormat", "")
            yield PanelQuery(
                uid,
                str(panel.get("title", "")),
                substitute(target["expr"], values),
                "" if legend == "__auto" else legend,
            )


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_IDENTIFIER = re.compile(r"(?<![\w.])([A-Za-z_:][\w:]*)\b(?!\s*\()")
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}
_NAME_MATCHER = re.compile(r'__name__\s*=~?\s*"([^"]*)"')


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (a light PromQL scan, enough for our queries).

    Bare identifiers outside strings, label matchers, ranges and label lists, not
    followed by ``(`` (functions and aggregations), plus ``__name__`` matchers split on
    ``|``.
    """
    names = {
        alternative
        for pattern in _NAME_MATCHER.findall(expr)
        for alternative in pattern.split("|")
        if alternative
    }
    text = _STRING.sub('""', expr)
    for pattern in (_LABEL_LIST, _MATCHERS, _RANGE):
        text = pattern.sub(" ", text)
    for match in _IDENTIFIER.finditer(text):
        word = match.group(1)
        if word.lower() not in _KEYWORDS and not re.fullmatch(r"\d\w*", word):
            names.add(word)
    return names


_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def format_legend(legend: str, labels: Mapping[str, str]) -> str:
    """A series' name as Grafana shows it: ``{{label}}`` in ``legend`` replaced by the
    series' label value ("" when absent); no legend names the series by its labels."""
    if not legend:
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        return f"{labels.get('__name__', '')}{{{inner}}}"
    return _LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), legend)
