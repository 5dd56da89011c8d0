"""Approved data provenance: the digest allow-list a platform team keeps in a ConfigMap.

A job with ``spec.dataset.provenance.requireApproved`` runs only on inputs whose sha256
(:mod:`kubetune.contract.digest`; a directory's digest for a directory) is listed in the
ConfigMap ``allowListRef`` names. The operator mounts that ConfigMap (``optional``: a
missing one is the trainer's clear error, not a pod stuck in ContainerCreating) into the
validation pod at :data:`ALLOW_LIST_DIR`; the trainer reads the key there and refuses an
input whose digest is not on the list. The operator itself never reads the ConfigMap.

The key's value is YAML (or JSON)::

    approved:
      - sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        name: support/train.jsonl
        note: reviewed 2026-11-30, ticket DATA-42
      - 60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752

(a bare list works too), or ``sha256sum`` output: one ``<digest>  <name>`` per line.
``kubetune provenance approve FILE...`` writes such a ConfigMap.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: Where the validation pod mounts the allow-list ConfigMap (every key is a file there).
ALLOW_LIST_DIR = Path("/etc/kubetune/provenance")
#: The ConfigMap key read when ``allowListRef.key`` is not set.
DEFAULT_KEY = "approved.yaml"
#: The volume name of the mounted allow-list in the validation pod.
VOLUME = "provenance-allow-list"

SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SUM_LINE = re.compile(r"^([0-9a-fA-F]{64})(?:\s+\*?(.*))?$")


class AllowListError(ValueError):
    """The allow-list cannot be read: the message says where and why (never file contents
    of the data)."""


@dataclass(frozen=True)
class ApprovedDigest:
    """One approved input: its sha256 and, optionally, what it is and why it was approved."""

    sha256: str
    name: str | None = None
    note: str | None = None

    def as_dict(self) -> dict[str, str]:
        out = {"sha256": self.sha256}
        if self.name:
            out["name"] = self.name
        if self.note:
            out["note"] = self.note
        return out


def _digest(value: Any, where: str) -> str:
    text = str(value).strip().lower().removeprefix("sha256:")
    if not SHA256.match(text):
        raise AllowListError(f"{where}: {str(value)[:80]!r} is not a sha256 digest (64 hex digits)")
    return text


def _entry(item: Any, where: str) -> ApprovedDigest:
    if isinstance(item, str):
        return ApprovedDigest(_digest(item, where))
    if isinstance(item, dict) and "sha256" in item:
        name, note = item.get("name"), item.get("note")
        return ApprovedDigest(
            _digest(item["sha256"], where),
            str(name) if name is not None else None,
            str(note) if note is not None else None,
        )
    raise AllowListError(f"{where}: expected a digest or an object with a sha256 key")


def _sum_lines(text: str) -> list[ApprovedDigest] | None:
    """``sha256sum`` output, or None when ``text`` is not in that format."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    matches = [_SUM_LINE.match(ln) for ln in lines]
    if not lines or not all(matches):
        return None
    return [
        ApprovedDigest(m.group(1).lower(), (m.group(2) or "").strip() or None)
        for m in matches
        if m is not None
    ]


def parse_allow_list(text: str, source: str = "allow-list") -> dict[str, ApprovedDigest]:
    """The approved digests of an allow-list document, by digest; :class:`AllowListError`
    when it does not parse (an empty list is valid: it approves nothing)."""
    summed = _sum_lines(text)
    if summed is not None:
        return {e.sha256: e for e in summed}
    try:
        doc = yaml.safe_load(text) if text.strip() else []
    except yaml.YAMLError as exc:
        raise AllowListError(f"{source} is neither YAML nor sha256sum output: {exc}") from exc
    if isinstance(doc, dict):
        doc = doc.get("approved", None)
    if doc is None:
        doc = []
    if not isinstance(doc, list):
        raise AllowListError(f"{source}: expected a list of digests under 'approved'")
    entries = [_entry(item, f"{source} entry {i + 1}") for i, item in enumerate(doc)]
    return {e.sha256: e for e in entries}


def render_allow_list(entries: Iterable[ApprovedDigest]) -> str:
    """The YAML value of an allow-list key (sorted by name, then digest)."""
    ordered = sorted(entries, key=lambda e: (e.name or "", e.sha256))
    return yaml.safe_dump({"approved": [e.as_dict() for e in ordered]}, sort_keys=False)


def allow_list_configmap(
    name: str,
    entries: Iterable[ApprovedDigest],
    *,
    namespace: str | None = None,
    key: str = DEFAULT_KEY,
) -> dict[str, Any]:
    """A ConfigMap manifest holding ``entries`` under ``key``."""
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = {"app.kubernetes.io/part-of": "kubetune", "kubetune.io/allow-list": "data"}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {key: render_allow_list(entries)},
    }


def dumps_manifest(manifest: dict[str, Any]) -> str:
    """YAML with the allow-list value as a literal block (readable in review)."""

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    return yaml.dump(manifest, Dumper=_Dumper, sort_keys=False)


__all__ = [
    "ALLOW_LIST_DIR",
    "DEFAULT_KEY",
    "AllowListError",
    "ApprovedDigest",
    "allow_list_configmap",
    "dumps_manifest",
    "parse_allow_list",
    "render_allow_list",
]
