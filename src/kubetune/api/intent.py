"""What a stored FineTuneJob's author wrote, as opposed to what the API server filled in.

The API server fills the FineTuneJob CRD's defaults into every stored job
(``resources.nodes``, ``runPolicy.backoffLimit``, ``tolerations: []``, ...). Laid over a
team's profile as they are, those defaults would hide every profile value: a profile's
``gpusPerNode: 8`` would lose to the ``1`` the server wrote. So before the profiles are
applied, :func:`authored_spec` keeps of a stored job's spec only

* the fields its author declared, where the object says so: the fields of
  ``kubectl apply``'s ``last-applied-configuration`` annotation, and the fields of
  server-side apply (``managedFields`` entries with operation ``Apply``), and
* every value that differs from the built-in default at its place (a value someone set,
  with ``kubectl create``, ``patch`` or ``edit``).

Limitation (documented): a job created without apply (``kubectl create``, a client's plain
POST) that sets a field to exactly its built-in default cannot be told from one that left
it out, so a profile's value wins there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


@lru_cache(maxsize=1)
def _spec_schema() -> dict[str, Any]:
    from kubetune.api.crd import openapi_schema  # crd imports the profile models

    return dict(openapi_schema()["properties"]["spec"])


def _paths(value: Any, prefix: str = "") -> Iterator[str]:
    """Every object and leaf path in ``value`` (lists are leaves)."""
    if isinstance(value, Mapping):
        for key, sub in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path
            yield from _paths(sub, path)


def _fields_v1_paths(fields: Any, prefix: str = "") -> Iterator[str]:
    if not isinstance(fields, Mapping):
        return
    for key, sub in fields.items():
        if not str(key).startswith("f:"):
            continue  # ".", "k:{...}", "v:..." describe list members: the list is a leaf
        path = f"{prefix}.{key[2:]}" if prefix else str(key[2:])
        yield path
        yield from _fields_v1_paths(sub, path)


def declared_paths(metadata: Mapping[str, Any]) -> set[str]:
    """The spec paths the object's metadata says its author wrote (may be empty)."""
    paths: set[str] = set()
    annotations = metadata.get("annotations") or {}
    if LAST_APPLIED in annotations:
        try:
            applied = json.loads(annotations[LAST_APPLIED])
        except ValueError:
            applied = {}
        if isinstance(applied, Mapping):
            paths.update(_paths(applied.get("spec") or {}))
    for entry in metadata.get("managedFields") or []:
        if entry.get("operation") == "Apply" and not entry.get("subresource"):
            paths.update(_fields_v1_paths((entry.get("fieldsV1") or {}).get("f:spec") or {}))
    return paths


def slim_managed_fields(metadata: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``managedFields`` entries :func:`declared_paths` reads (server-side apply of the
    spec), reduced to that: what an operator's cache needs to keep of them."""
    kept = []
    for entry in metadata.get("managedFields") or []:
        if entry.get("operation") == "Apply" and not entry.get("subresource"):
            spec = (entry.get("fieldsV1") or {}).get("f:spec")
            if spec:
                kept.append({"operation": "Apply", "fieldsV1": {"f:spec": spec}})
    return kept


def _filter(
    value: Mapping[str, Any],
    schema: Mapping[str, Any],
    outer: list[Mapping[str, Any]],
    declared: set[str],
    prefix: str,
) -> dict[str, Any]:
    """``value`` without the leaves the server may have defaulted and nobody declared.

    A leaf's possible server defaults: its own schema ``default`` (filled when its object
    exists) and its value in an enclosing object's ``default`` (``outer``: filled when the
    author left that object out).
    """
    props = schema.get("properties") or {}
    out = {}
    for key, sub in value.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        sub_schema = props.get(key) or {}
        candidates = [d[key] for d in outer if key in d]
        if "default" in sub_schema:
            candidates.append(sub_schema["default"])
        if isinstance(sub, Mapping) and sub:
            inner = [c for c in candidates if isinstance(c, Mapping)]
            kept = _filter(sub, sub_schema, inner, declared, path)
            if kept or path in declared:
                out[key] = kept
        elif path in declared or sub not in candidates:
            out[key] = sub
    return out


def is_stored(raw: Mapping[str, Any]) -> bool:
    """Read from the API server (defaults filled in), not a manifest from a file."""
    return bool((raw.get("metadata") or {}).get("resourceVersion"))


def authored_spec(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The spec of ``raw`` as its author wrote it (see the module docstring). A manifest not
    read from the API server (no ``resourceVersion``) is all authored."""
    spec = dict(raw.get("spec") or {})
    if not is_stored(raw):
        return spec
    declared = declared_paths(raw.get("metadata") or {})
    return _filter(spec, _spec_schema(), [], declared, "")
