"""Render the dashboards to JSON, byte-for-byte reproducibly (the drift check compares
files)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dashboard_model

from kubetune.dashboards import fleet, job, operator_health, rollout

#: Where the chart picks dashboards up (templates/grafana-dashboards.yaml), relative to
#: the repository root.
DASHBOARD_DIR = Path("charts/kubetune/files/dashboards")

#: file name -> builder, in the order a reader meets them.
DASHBOARDS: dict[str, Callable[[], dashboard_model.Dashboard]] = {
    fleet.FILENAME: fleet.build,
    job.FILENAME: job.build,
    operator_health.FILENAME: operator_health.build,
    rollout.FILENAME: rollout.build,
}


def to_json_text(model: dashboard_model.Dashboard) -> str:
    """Sorted keys, two-space indent, trailing newline: stable diffs in review."""
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def render_all() -> dict[str, str]:
    """Every dashboard: file name -> JSON text."""
    return {name: to_json_text(build()) for name, build in DASHBOARDS.items()}


def stale_files(directory: Path, rendered: dict[str, str]) -> list[Path]:
    """Files of ``directory`` that differ from ``rendered`` or are missing, plus JSON files
    no generator writes any more (a removed dashboard must not linger in the chart)."""
    stale = [
        directory / name
        for name, text in rendered.items()
        if not (directory / name).exists() or (directory / name).read_text() != text
    ]
    if directory.is_dir():
        stale += sorted(p for p in directory.glob("*.json") if p.name not in rendered)
    return stale


def write_all(directory: Path, rendered: dict[str, str]) -> list[Path]:
    """Write ``rendered`` into ``directory`` and delete JSON files no generator writes;
    returns the paths written or removed."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = []
    for path in sorted(p for p in directory.glob("*.json") if p.name not in rendered):
        path.unlink()
        changed.append(path)
    for name, text in rendered.items():
        path = directory / name
        path.write_text(text)
        changed.append(path)
    return changed
