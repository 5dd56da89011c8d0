"""The per-job NetworkPolicy: only the gang and the operator may reach the job's pods.

Training pods listen on the rendezvous port, NCCL/Gloo's ephemeral ports and the
metrics/progress port. Without a policy every pod in the cluster could connect to them
(join the rendezvous, feed the collective, read or fake progress). The policy selects
every pod of the job and admits ingress

* from the job's own training pods, on any port (torchrun's rendezvous and the
  collectives' data connections, whose ports are chosen at run time);
* from the operator's pods (``operator_namespace`` / ``operator_pod_labels``), on the
  metrics/progress port only;
* from any pod of ``metrics_scrape_namespaces`` (e.g. Prometheus), on that port only.

Egress is not restricted (object stores, registries, DNS). A cluster whose network
plugin does not enforce NetworkPolicy stores it and ignores it.
"""

from __future__ import annotations

from typing import Any

from kubetune.api import FineTuneJob
from kubetune_operator import naming
from kubetune_operator.render import common
from kubetune_operator.settings import OperatorSettings

#: Label every namespace carries (set by the API server): selects a namespace by name.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def network_policy_name(job_name: str) -> str:
    """Named like the job's headless Service (a valid name for any job name)."""
    return naming.service_name(job_name)


def render_network_policy(job: FineTuneJob, settings: OperatorSettings) -> dict[str, Any]:
    """``networking.k8s.io/v1`` NetworkPolicy owned by the job."""
    name = str(job.metadata.name)
    metrics_port = {"protocol": "TCP", "port": settings.progress_port}
    operator_peer: dict[str, Any] = {
        "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: settings.operator_namespace}}
    }
    if settings.operator_pod_labels:
        operator_peer["podSelector"] = {"matchLabels": dict(settings.operator_pod_labels)}
    rules: list[dict[str, Any]] = [
        {"from": [{"podSelector": {"matchLabels": naming.job_selector(name)}}]},
        {"from": [operator_peer], "ports": [dict(metrics_port)]},
    ]
    if settings.metrics_scrape_namespaces:
        rules.append(
            {
                "from": [
                    {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}}}
                    for namespace in settings.metrics_scrape_namespaces
                ],
                "ports": [dict(metrics_port)],
            }
        )
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": common.object_meta(job, network_policy_name(name), "network-policy"),
        "spec": {
            "podSelector": {"matchLabels": {naming.LABEL_JOB: naming.job_label_value(name)}},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }
    return common.adopt(policy, job)
