"""The headless Service behind the rendezvous address ``<short>-0.<short>.<ns>.svc``
(``<short>`` is :func:`naming.short_name`: the job name when it is a short DNS label)."""

from __future__ import annotations

from typing import Any

from kubetune.api import FineTuneJob
from kubetune_operator import naming
from kubetune_operator.render import common
from kubetune_operator.settings import OperatorSettings


def render_service(job: FineTuneJob, settings: OperatorSettings) -> dict[str, Any]:
    """Headless (no cluster IP, no load balancing): only per-pod DNS records matter.

    ``publishNotReadyAddresses`` because ranks must resolve the master before any pod is
    Ready -- the rendezvous happens during start-up.
    """
    name = str(job.metadata.name)
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": common.object_meta(job, naming.service_name(name), "rendezvous"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": naming.job_selector(name),
            "ports": [
                {
                    "name": "rdzv",
                    "port": settings.rendezvous_port,
                    "targetPort": settings.rendezvous_port,
                    "protocol": "TCP",
                },
                {
                    "name": "metrics",
                    "port": settings.progress_port,
                    "targetPort": settings.progress_port,
                    "protocol": "TCP",
                },
            ],
        },
    }
    return common.adopt(svc, job)
