"""Evaluate the CRD's CEL rules (``x-kubernetes-validations``) in Python.

The rules are written once, on the pydantic models, and land in the CRD; this module
walks the generated schema beside an object and runs the very same expressions with
``cel-python``, so the CLI and the operator reach the API server's verdicts without a
second hand-written copy of the rules.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import celpy
from celpy import celtypes

from kubetune.api.problems import Problem, join_path

_ENV = celpy.Environment()

# The Kubernetes CEL quantity library (quantity(), isQuantity(), comparisons), which
# the API server offers to CRD rules; cel-python has no such library, so the subset
# the rules use is implemented here with the API server's semantics.
_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))([a-zA-Z]*|[eE][+-]?[0-9]+)$")
_SUFFIXES = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
}


@dataclass(frozen=True)
class Quantity:
    """A parsed Kubernetes resource quantity (exact, as a Decimal)."""

    value: Decimal


def parse_quantity(text: str) -> Quantity:
    """``64Gi`` -> 68719476736; ValueError for what the API server would not parse."""
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"invalid quantity {text!r}")
    number, suffix = match.groups()
    try:
        if suffix[:1] in ("e", "E"):
            return Quantity(Decimal(number) * Decimal(10) ** int(suffix[1:]))
        if suffix not in _SUFFIXES:
            raise ValueError(f"invalid quantity suffix in {text!r}")
        return Quantity(Decimal(number) * _SUFFIXES[suffix])
    except InvalidOperation as err:
        raise ValueError(f"invalid quantity {text!r}") from err


def _is_quantity(text: Any) -> celtypes.BoolType:
    try:
        parse_quantity(str(text))
    except ValueError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(True)


def _compare(a: Quantity, b: Quantity) -> int:
    return (a.value > b.value) - (a.value < b.value)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "quantity": lambda text: parse_quantity(str(text)),
    "isQuantity": _is_quantity,
    "compareTo": lambda a, b: celtypes.IntType(_compare(a, b)),
    "isGreaterThan": lambda a, b: celtypes.BoolType(_compare(a, b) > 0),
    "isLessThan": lambda a, b: celtypes.BoolType(_compare(a, b) < 0),
}


_PER_THREAD = threading.local()
_MAX_PROGRAMS = 1024


def _program(expression: str) -> celpy.Runner:
    """The compiled rule, cached per thread: a celpy Runner keeps its activation on itself
    while it evaluates, so one shared Runner mixes up concurrent evaluations (the operator
    validates in worker threads) -- a valid job then fails with another rule's variables."""
    programs: dict[str, celpy.Runner] | None = getattr(_PER_THREAD, "programs", None)
    if programs is None:
        programs = _PER_THREAD.programs = {}
    program = programs.get(expression)
    if program is None:
        if len(programs) >= _MAX_PROGRAMS:
            programs.clear()
        program = programs[expression] = _ENV.program(_ENV.compile(expression), functions=FUNCTIONS)
    return program


def _activation(self_value: Any, old_value: Any | None) -> dict[str, Any]:
    """CEL values for one schema node, converted once for all of its rules."""
    activation: dict[str, Any] = {"self": celpy.json_to_cel(self_value)}
    if old_value is not None:
        activation["oldSelf"] = celpy.json_to_cel(old_value)
    return activation


def _is_transition_rule(rule: Mapping[str, Any]) -> bool:
    return "oldSelf" in rule["rule"]


def _check_node(
    schema: Mapping[str, Any], value: Any, old: Any | None, path: str, strict: bool
) -> list[Problem]:
    problems: list[Problem] = []
    rules = schema.get("x-kubernetes-validations", [])
    if not rules:
        return problems
    activation = _activation(value, old)
    for rule in rules:
        if _is_transition_rule(rule) and old is None:
            continue  # like the API server: transition rules apply to updates only
        where = join_path(path, rule.get("fieldPath", ""))
        try:
            verdict = _program(rule["rule"]).evaluate(activation)
        except Exception as err:  # a rule that cannot run is a refusal, not a pass
            if not strict:
                continue
            problems.append(Problem(where, f"rule {rule['rule']!r} failed to evaluate: {err}"))
            continue
        if not bool(verdict):
            message = rule["message"]
            if "messageExpression" in rule:
                with contextlib.suppress(Exception):  # fall back to the static message
                    message = str(_program(rule["messageExpression"]).evaluate(activation))
            problems.append(Problem(where, message))
    return problems


def check(
    schema: Mapping[str, Any],
    value: Any,
    old: Any | None = None,
    path: str = "",
    *,
    strict: bool = True,
) -> list[Problem]:
    """Every CEL rule in ``schema`` that ``value`` (and, on update, ``old``) breaks.

    With ``strict=False`` a rule that cannot be evaluated (the object already has type
    errors reported elsewhere) is skipped instead of reported.
    """
    problems = _check_node(schema, value, old, path, strict)
    if isinstance(value, Mapping):
        for key, sub_schema in schema.get("properties", {}).items():
            if key in value:
                old_sub = old.get(key) if isinstance(old, Mapping) else None
                problems += check(
                    sub_schema, value[key], old_sub, join_path(path, key), strict=strict
                )
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            for key, item in value.items():
                problems += check(extra, item, None, f"{path}[{key}]", strict=strict)
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            problems += check(schema["items"], item, None, f"{path}[{index}]", strict=strict)
    return problems


def apply_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """A copy of ``value`` with the schema's defaults filled in, as the API server does."""
    if isinstance(value, Mapping):
        out = dict(value)
        for key, sub in schema.get("properties", {}).items():
            if key not in out and "default" in sub:
                out[key] = apply_defaults(sub, sub["default"])
            elif key in out:
                out[key] = apply_defaults(sub, out[key])
        return out
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in value]
    return value
