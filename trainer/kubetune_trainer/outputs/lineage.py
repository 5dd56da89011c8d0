"""Lineage: what exactly produced a model (digests of inputs, config hash, versions).

Digests are sha256 over file contents; a directory's digest hashes the sorted list of
(relative path, file digest) pairs, so it is independent of file system order and
timestamps. Hidden files and ``.cache`` are skipped.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

# the digests moved to the contract (the CLI computes them too); re-exported here
from kubetune.contract.digest import CHUNK as CHUNK
from kubetune.contract.digest import sha256_file as sha256_file
from kubetune.contract.digest import sha256_path as sha256_path
from kubetune.contract.env import GIT_REVISION_ENV

PACKAGES = (
    "kubetune",
    "torch",
    "transformers",
    "peft",
    "trl",
    "deepspeed",
    "accelerate",
    "datasets",
    "tokenizers",
    "safetensors",
)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_revision() -> str | None:
    """The source revision: $KUBETUNE_GIT_REVISION (set in the image) or ``git``."""
    env = os.environ.get(GIT_REVISION_ENV)
    if env:
        return env
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    revision = out.stdout.strip()
    return revision if out.returncode == 0 and revision else None


def without_env(job: dict[str, Any]) -> dict[str, Any]:
    """``job`` with every ``spec.env`` removed from its ``resolvedJob`` (a copy).

    Lineage ships with the model; user env values may be credentials, and they are not part
    of what produced the weights the way the spec's other fields are."""
    resolved = job.get("resolvedJob")
    if not isinstance(resolved, dict):
        return dict(job)
    spec = resolved.get("spec")
    if not isinstance(spec, dict) or "env" not in spec:
        return dict(job)
    clean_spec = {k: v for k, v in spec.items() if k != "env"}
    return {**job, "resolvedJob": {**resolved, "spec": clean_spec}}


def build_lineage(
    *,
    job: dict[str, Any],
    base_model: dict[str, Any],
    datasets: list[dict[str, Any]],
    training: dict[str, Any],
    evaluation: dict[str, Any],
    outputs: dict[str, Any],
) -> dict[str, Any]:
    return {
        "schema": "kubetune.io/lineage/v1",
        "job": without_env(job),
        "baseModel": base_model,
        "datasets": datasets,
        "training": training,
        "evaluation": evaluation,
        "outputs": outputs,
        "software": {"versions": package_versions(), "gitRevision": git_revision()},
    }


#: job fields an upstream record keeps: enough to name and reproduce the stage, small
#: enough that a long chain of stages stays a few kilobytes
UPSTREAM_KEYS = ("name", "namespace", "method", "configHash")
MAX_UPSTREAM_DEPTH = 16


def upstream_record(model_dir: Path, depth: int = 0) -> dict[str, Any] | None:
    """The compact lineage of a kubetune output used as an input (None for other models).

    Keeps the job's identity, base model, datasets and final evaluation summary of that
    stage, and its own ``upstream`` records: a pipeline's final model card walks back to
    the first stage without embedding every resolved job.
    """
    path = model_dir / "lineage.json"
    if depth >= MAX_UPSTREAM_DEPTH or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        job = record["job"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    compact: dict[str, Any] = {
        "job": {k: job.get(k) for k in UPSTREAM_KEYS},
        "baseModel": record.get("baseModel"),
        "datasets": [
            {k: d.get(k) for k in ("split", "uri", "sha256", "validRows")}
            for d in record.get("datasets", [])
        ],
        "outputDirectory": str(model_dir),
    }
    if isinstance(record.get("upstream"), dict) and depth + 1 < MAX_UPSTREAM_DEPTH:
        compact["upstream"] = record["upstream"]  # already compact, written by that stage
    return compact
