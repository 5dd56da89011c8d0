"""Evaluation sets: JSONL rows of ``{"prompt": ..., "reference": ...}``."""

from __future__ import annotations

import json
from dataclasses import dataclass

from kubetune.api.evaluation import EvaluationSet
from kubetune_trainer.errors import InvalidDataError
from kubetune_trainer.uris import resolve_location


@dataclass(frozen=True)
class Example:
    prompt: str
    reference: str


def load_set(spec: EvaluationSet) -> list[Example]:
    """The first ``maxExamples`` rows; a malformed row is an error naming its line."""
    path = resolve_location(spec.uri, InvalidDataError, what=f"evaluation set {spec.name}")
    examples: list[Example] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            if spec.max_examples is not None and len(examples) >= spec.max_examples:
                break
            try:
                row = json.loads(line)
                prompt, reference = row["prompt"], row.get("reference", "")
                if not isinstance(prompt, str) or not isinstance(reference, str):
                    raise TypeError("prompt and reference must be strings")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise InvalidDataError(
                    f"evaluation set {spec.name} ({spec.uri}) line {number}: expected "
                    f'{{"prompt": "...", "reference": "..."}}: {exc}'
                ) from exc
            examples.append(Example(prompt, reference))
    if not examples:
        raise InvalidDataError(f"evaluation set {spec.name} ({spec.uri}) has no rows")
    return examples
