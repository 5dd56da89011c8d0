"""Personal data in whole rows and datasets: every text field of every format.

Rows are scanned as stored (before format checks), so one walk covers every format:
chat messages, prompts and completions, preference prompts with chosen and rejected
answers, plain text. Keys that hold no free text (message roles, content-part types,
image paths, labels) are skipped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune_trainer.privacy.detect import check_kinds, find_personal_data, redact

#: keys whose values are not free text: never scanned nor changed
NON_TEXT_KEYS = frozenset({"role", "type", "image", "images", "label", "image_url"})


@dataclass(frozen=True, slots=True)
class RowFinding:
    """Personal data of one kind in one row: where (file and line) and how often.

    Holds no value: it can be logged and shown to the user as is."""

    source: str
    line: int
    kind: str
    count: int = 1

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.kind}"


@dataclass
class PersonalDataScan:
    """What a scan found: counts per kind, rows affected, and each (file, line, kind)."""

    rows: int = 0
    rows_with_findings: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    findings: list[RowFinding] = field(default_factory=list)

    def add_row(self, source: str, line: int, counts: Counter[str]) -> None:
        self.rows += 1
        if counts:
            self.rows_with_findings += 1
            self.counts.update(counts)
            self.findings.extend(RowFinding(source, line, k, n) for k, n in sorted(counts.items()))

    def merge(self, other: PersonalDataScan) -> None:
        self.rows += other.rows
        self.rows_with_findings += other.rows_with_findings
        self.counts.update(other.counts)
        self.findings.extend(other.findings)


def scan_value(
    value: Any, kinds: Collection[str] | None = None, skip: Collection[str] = NON_TEXT_KEYS
) -> Counter[str]:
    """Per-kind counts of personal data in every string inside ``value`` (a row)."""
    wanted = check_kinds(kinds)
    counts: Counter[str] = Counter()
    for text in _strings(value, skip):
        counts.update(f.kind for f in find_personal_data(text, wanted))
    return counts


def redact_value(
    value: Any, kinds: Collection[str] | None = None, skip: Collection[str] = NON_TEXT_KEYS
) -> tuple[Any, Counter[str]]:
    """A copy of ``value`` (a row: dicts, lists, strings) with every string redacted."""
    wanted = check_kinds(kinds)
    counts: Counter[str] = Counter()

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            text, found = redact(node, wanted)
            counts.update(found)
            return text
        if isinstance(node, dict):
            return {k: (v if k in skip else walk(v)) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [walk(v) for v in node]
        return node

    return walk(value), counts


def _strings(value: Any, skip: Collection[str]) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            if k not in skip:
                yield from _strings(v, skip)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v, skip)


def scan_rows(
    rows: Iterable[Any], kinds: Collection[str] | None = None, skip: Collection[str] = NON_TEXT_KEYS
) -> PersonalDataScan:
    """Scan rows as read by :func:`kubetune_trainer.data.readers.iter_rows` (anything
    with ``source``, ``line`` and ``value``); unparseable rows count but hold nothing."""
    scan = PersonalDataScan()
    for row in rows:
        counts = scan_value(row.value, kinds, skip) if row.value is not None else Counter()
        scan.add_row(row.source, row.line, counts)
    return scan


def scan_dataset(
    path: Path, kinds: Collection[str] | None = None, split: str = "train"
) -> PersonalDataScan:
    """Scan every row of a dataset (a file, a directory of row files or a saved
    Hugging Face dataset) for personal data."""
    from kubetune_trainer.data.readers import iter_rows

    return scan_rows(iter_rows(path, split=split), kinds)
