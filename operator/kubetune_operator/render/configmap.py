"""The ConfigMap that hands the trainer its resolved spec (``/etc/kubetune/job.json``)."""

from __future__ import annotations

from typing import Any

from kubetune.api import FineTuneJob
from kubetune.api.resolve import ResolvedJob
from kubetune_operator import naming
from kubetune_operator.render import common


def render_config_map(job: FineTuneJob, resolved: ResolvedJob) -> dict[str, Any]:
    """``<job>-config`` with ``job.json`` = the ResolvedJob the trainer runs, exactly."""
    name = str(job.metadata.name)
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": common.object_meta(
            job,
            naming.config_map_name(name),
            "config",
            annotations={
                naming.ANNOTATION_CONFIG_HASH: resolved.config_hash(),
                naming.LABEL_ATTEMPT: str(resolved.attempt),
            },
        ),
        "data": {naming.CONFIG_KEY: resolved.model_dump_json(by_alias=True, exclude_none=True)},
    }
    return common.adopt(cm, job)
