"""Atomic checkpoint directories: staged, fsynced, marked COMPLETE, then renamed.

Layout under ``<output>/checkpoints``::

    .staging-step-000000120/   being written (all ranks write here; never "latest")
    step-000000100/COMPLETE    a finished checkpoint (the marker is written last)
    latest                     name of the newest complete checkpoint (atomic replace)

A crash at any point leaves either the previous checkpoints untouched or a staging
directory that the next start deletes; ``latest_complete`` only ever returns a
directory that was renamed into place *after* its files and COMPLETE marker were
fsynced. Pruning keeps the newest ``keep_last`` complete checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

PREFIX = "step-"
STAGING_PREFIX = ".staging-"
COMPLETE = "COMPLETE"
LATEST = "latest"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:09d}"


def staging_path(root: Path, step: int) -> Path:
    return root / f"{STAGING_PREFIX}{checkpoint_name(step)}"


def prepare_staging(root: Path, step: int) -> Path:
    """(rank 0) A fresh, empty staging directory for ``step``."""
    root.mkdir(parents=True, exist_ok=True)
    staging = staging_path(root, step)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    return staging


def _fsync_path(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; rename is still atomic
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    for dirpath, _, files in os.walk(path):
        for name in files:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))


def write_atomic(path: Path, data: str | bytes, durable: bool = True) -> None:
    """Write a small file so readers see the old or the new content, never a mix.

    ``durable=False`` skips the fsync: still atomic for readers (rename), but may be lost
    in a power cut — right for the progress document, rewritten every step.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(tmp, mode) as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)


def commit(root: Path, staging: Path, step: int, metadata: dict[str, object]) -> Path:
    """(rank 0, after every rank finished writing) Seal and publish the checkpoint."""
    marker = {"step": step, "completedAt": time.time(), **metadata}
    (staging / COMPLETE).write_text(json.dumps(marker, indent=2, default=str))
    fsync_tree(staging)
    final = root / checkpoint_name(step)
    if final.exists():  # re-saving a step (e.g. SIGTERM right after a periodic save)
        old = root / f"{STAGING_PREFIX}old-{checkpoint_name(step)}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)
    _fsync_path(root)
    write_atomic(root / LATEST, final.name + "\n")
    return final


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.is_dir() and path.name.startswith(PREFIX) and (path / COMPLETE).exists():
            try:
                found.append((int(path.name[len(PREFIX) :]), path))
            except ValueError:
                continue
    return sorted(found)


def latest_complete(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1][1] if found else None


def prune(root: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints."""
    found = complete_checkpoints(root)
    doomed = [path for _, path in found[: max(0, len(found) - keep_last)]]
    for path in doomed:
        # Un-mark first so a crash mid-delete never leaves a "complete" partial directory.
        (path / COMPLETE).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def clean_staging(root: Path) -> None:
    """Remove leftovers of interrupted saves (rank 0, at start)."""
    if not root.is_dir():
        return
    for path in root.iterdir():
        if path.name.startswith(STAGING_PREFIX) or (
            path.is_dir() and path.name.startswith(PREFIX) and not (path / COMPLETE).exists()
        ):
            shutil.rmtree(path, ignore_errors=True)
