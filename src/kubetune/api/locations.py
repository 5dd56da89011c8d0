"""Every input location a job spec names, found from the schema rather than listed by hand.

The operator mounts each ``pvc://<claim>`` the trainer reads (read-only), and the local
runner prepares the examples' stand-ins for them. A hand-written list of fields goes stale
each time the API gains one (a reward model, a value model, a held-out judge, an
evaluation set, earlier tasks' data), and the trainer then fails hours in on a path that
was never mounted; walking the fields typed ``Location`` cannot miss one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel, StringConstraints

from kubetune.api.common import LOCATION_PATTERN


def _names_location(annotation: Any, metadata: list[Any] | None = None) -> bool:
    for item in metadata or []:
        if isinstance(item, StringConstraints) and item.pattern == LOCATION_PATTERN:
            return True
    if get_origin(annotation) is Annotated:
        _, *extra = get_args(annotation)
        return _names_location(None, list(extra))
    return any(_names_location(arg) for arg in get_args(annotation))


def _walk(value: Any) -> Iterator[str]:
    if isinstance(value, BaseModel):
        for name, info in type(value).model_fields.items():
            field_value = getattr(value, name)
            if field_value is None:
                continue
            if _names_location(info.annotation, info.metadata):
                if isinstance(field_value, str):
                    yield field_value
                elif isinstance(field_value, list | tuple):
                    yield from (v for v in field_value if isinstance(v, str))
                continue
            yield from _walk(field_value)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _walk(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)


def input_locations(spec: BaseModel) -> list[str]:
    """The spec's input locations (model, data, reference/reward/value models, evaluation
    sets, ...), in field order, without duplicates; the output location is not one."""
    return list(dict.fromkeys(_walk(spec)))
