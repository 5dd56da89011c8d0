"""Read dataset rows from JSONL, JSON, Parquet or a saved Hugging Face dataset directory.

Every row carries its source file and line (or row number) so validation can point at
the exact place to fix. Unparseable lines are yielded as rows with an ``error`` instead
of raising: one bad line must be reported alongside all the others, not hide them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_trainer.errors import InvalidDataError

ROW_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
HF_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass(frozen=True)
class RawRow:
    """One row as stored, before format checks."""

    source: str
    line: int
    value: dict[str, Any] | None
    error: str | None = None


def is_hf_dataset_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in HF_DATASET_MARKERS)


def data_files(path: Path) -> list[Path]:
    """The row files behind ``path``: the file itself or the row files of a directory."""
    if path.is_file():
        return [path]
    if is_hf_dataset_dir(path):
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in ROW_FILE_SUFFIXES)
        if not files:
            raise InvalidDataError(f"{path} contains no .jsonl, .json or .parquet files")
        return files
    raise InvalidDataError(f"{path} does not exist")


def iter_rows(path: Path, split: str = "train") -> Iterator[RawRow]:
    """All rows under ``path`` in a stable order."""
    for file in data_files(path):
        if is_hf_dataset_dir(file):
            yield from _hf_rows(file, split)
        elif file.suffix == ".parquet":
            yield from _parquet_rows(file)
        else:
            yield from _json_rows(file)


def _json_rows(file: Path) -> Iterator[RawRow]:
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidDataError(f"{file} is not UTF-8 text: {exc}") from exc
    except OSError as exc:
        raise InvalidDataError(f"cannot read {file}: {exc}") from exc
    stripped = text.lstrip()
    if file.suffix == ".json" and stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidDataError(f"{file} is not valid JSON: {exc}") from exc
        for index, item in enumerate(items, start=1):
            yield _as_row(str(file), index, item)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield RawRow(str(file), number, None, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        yield _as_row(str(file), number, value)


def _as_row(source: str, line: int, value: Any) -> RawRow:
    if not isinstance(value, dict):
        return RawRow(source, line, None, f"row is a JSON {type(value).__name__}, not an object")
    return RawRow(source, line, value)


def _parquet_rows(file: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(file)
    except Exception as exc:
        raise InvalidDataError(f"{file} is not a readable Parquet file: {exc}") from exc
    number = 0
    for batch in handle.iter_batches(batch_size=1024):
        for value in batch.to_pylist():
            number += 1
            yield RawRow(str(file), number, value)


def _hf_rows(path: Path, split: str) -> Iterator[RawRow]:
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(path))
    except Exception as exc:
        raise InvalidDataError(f"{path} is not a readable saved dataset: {exc}") from exc
    if isinstance(loaded, DatasetDict):
        wanted = [split] if split == "train" else [split, "validation", "test", "eval"]
        names = [n for n in wanted if n in loaded]
        if not names:
            raise InvalidDataError(
                f"{path} has splits {sorted(loaded)}, none of which is {wanted[0]!r}"
            )
        dataset: Dataset = loaded[names[0]]
        source = f"{path}[{names[0]}]"
    else:
        dataset = loaded
        source = str(path)
    for number, value in enumerate(dataset, start=1):
        yield RawRow(source, number, dict(value))
