"""The ConfigMap that hands the trainer its resolved spec (``/etc/kubetune/job.json``).

The document never holds ``spec.env``: user variables (whose values may be credentials
the API could not recognise by name) reach the trainer only through the containers' env,
never through a ConfigMap anyone with the ``view`` role can read. The trainer does not read
``spec.env`` from the document.
"""

from __future__ import annotations

from typing import Any

from kubetune.api import FineTuneJob
from kubetune.api.resolve import ResolvedJob
from kubetune_operator import naming
from kubetune_operator.render import common


def trainer_document(resolved: ResolvedJob) -> ResolvedJob:
    """``resolved`` as the trainer gets it: without ``spec.env`` (names and values). Its
    :meth:`~ResolvedJob.config_hash` is the one the operator records (pods, status), so the
    hash of the document the trainer runs and the operator's agree."""
    if not resolved.spec.env:
        return resolved
    return resolved.model_copy(update={"spec": resolved.spec.model_copy(update={"env": []})})


def render_config_map(job: FineTuneJob, resolved: ResolvedJob) -> dict[str, Any]:
    """``<job>-config`` with ``job.json`` = the ResolvedJob the trainer runs, exactly
    (:func:`trainer_document`: no ``spec.env``)."""
    name = str(job.metadata.name)
    document = trainer_document(resolved)
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": common.object_meta(
            job,
            naming.config_map_name(name),
            "config",
            annotations={
                naming.ANNOTATION_CONFIG_HASH: document.config_hash(),
                naming.LABEL_ATTEMPT: str(document.attempt),
            },
        ),
        "data": {naming.CONFIG_KEY: document.model_dump_json(by_alias=True, exclude_none=True)},
    }
    return common.adopt(cm, job)
