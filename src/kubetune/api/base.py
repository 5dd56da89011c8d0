"""Shared pydantic configuration for the API types."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields refused.

    Unknown fields are refused (not pruned) so a typo such as ``learningrate`` is an
    error, matching ``kubectl``'s strict server-side field validation.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )


def cel(
    rule: str, message: str, field_path: str | None = None, reason: str | None = None
) -> dict[str, Any]:
    """One ``x-kubernetes-validations`` entry; evaluated by the API server and by us."""
    entry: dict[str, Any] = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def validations(*rules: dict[str, Any]) -> dict[str, Any]:
    """``json_schema_extra`` that attaches CEL rules to a model or field."""
    return {"x-kubernetes-validations": list(rules)}
