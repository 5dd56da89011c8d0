"""A validation finding that names the offending field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Problem:
    """One problem (or warning) with a manifest, e.g. ``spec.method: ...``."""

    path: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def join_path(base: str, field_path: str) -> str:
    """Join ``spec`` and ``.hyperparameters.seed`` (a CEL fieldPath) or ``seed``."""
    if not field_path:
        return base
    if field_path.startswith("."):
        return f"{base}{field_path}" if base else field_path[1:]
    if field_path.startswith("["):
        return f"{base}{field_path}"
    return f"{base}.{field_path}" if base else field_path
