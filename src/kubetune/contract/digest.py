"""Content digests of the job's inputs, shared by the trainer's lineage and the CLI.

A file's digest is sha256 over its bytes; a directory's digest hashes the sorted list of
(relative path, file digest) pairs, so it is independent of file system order and
timestamps. Hidden files and folders (``.cache``, ``.git``) are skipped.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """The file's digest; a file unchanged since it was last hashed in this process
    (same size and mtime) is not read again: lineage and provenance both ask for it."""
    stat = path.stat()
    return _sha256_file(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _sha256_file(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_path(path: Path) -> str:
    """Digest of a file, or of every file under a directory."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path)
        if any(part.startswith(".") for part in rel.parts):
            continue
        digest.update(str(rel).encode() + b"\0" + sha256_file(file).encode() + b"\n")
    return digest.hexdigest()
