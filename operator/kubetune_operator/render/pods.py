"""The training pods of one gang attempt.

Their command is the contract's launch command (``kubetune.contract.launch``) with a
static rendezvous at the rank-0 pod, reached through the headless Service.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kubetune.api import FineTuneJob
from kubetune.contract import paths
from kubetune.contract.env import (
    ATTEMPT_ENV,
    CONFIG_ENV,
    HF_OFFLINE_ENV,
    METRICS_PORT_ENV,
    OUTPUT_ENV,
    PVC_ROOT_ENV,
    UNBUFFERED_ENV,
)
from kubetune.contract.launch import StaticRendezvous, launch_command
from kubetune_operator import naming
from kubetune_operator.render import common
from kubetune_operator.settings import OperatorSettings

#: Spec fields a user may edit while the job runs that shape its pods or the trainer's
#: configuration: a running gang keeps what it was created with, so a change waits for the
#: next attempt. (resources and distributed change only while suspended; the run policy
#: is the operator's and applies at once; the rest is immutable.)
POD_SECTIONS = (
    "image",
    "imagePullPolicy",
    "imagePullSecrets",
    "serviceAccountName",
    "env",
    "checkpoint",
    "health",
    "rlhf",
)


def spec_sections(job: FineTuneJob) -> dict[str, str]:
    """A short hash of each of :data:`POD_SECTIONS` as the spec has it now."""
    spec = job.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {
        section: hashlib.sha256(json.dumps(spec.get(section), sort_keys=True).encode()).hexdigest()[
            :12
        ]
        for section in POD_SECTIONS
    }


def master_address(job: FineTuneJob) -> str:
    """DNS name of the rank-0 pod through the headless Service (cluster-domain agnostic)."""
    name = str(job.metadata.name)
    return (
        f"{naming.pod_hostname(name, 0)}.{naming.service_name(name)}."
        f"{job.metadata.namespace or 'default'}.svc"
    )


def torchrun_command(
    job: FineTuneJob, attempt: int, rank: int, settings: OperatorSettings
) -> list[str]:
    """The launch command for ``rank`` of gang ``attempt``."""
    res = job.spec.resources
    rendezvous = StaticRendezvous(
        nnodes=res.nodes,
        node_rank=rank,
        master_addr=master_address(job),
        master_port=settings.rendezvous_port,
        run_id=f"{job.metadata.uid}-{attempt}",
        timeout_seconds=job.spec.distributed.rendezvous_timeout_seconds,
    )
    return launch_command(res.gpus_per_node, rendezvous)


def resources(job: FineTuneJob, settings: OperatorSettings | None = None) -> dict[str, Any]:
    """Requests == limits (Guaranteed QoS; extended resources must match anyway), plus the
    operator's ``ephemeral_storage`` bound."""
    res = job.spec.resources
    amounts: dict[str, str] = {"cpu": res.cpu, "memory": res.memory}
    if res.gpus_per_node:
        amounts[res.gpu_resource_name] = str(res.gpus_per_node)
    if settings is not None:
        amounts = common.with_ephemeral_storage(amounts, settings.ephemeral_storage)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def contract_env(
    job: FineTuneJob, attempt: int, output_dir: str | None, settings: OperatorSettings
) -> list[dict[str, Any]]:
    """The variables the trainer reads (``kubetune.contract.env``); set last so a user's
    ``spec.env`` cannot redirect them."""
    env = [
        {"name": CONFIG_ENV, "value": str(paths.DEFAULT_CONFIG_PATH)},
        {"name": ATTEMPT_ENV, "value": str(attempt)},
        {"name": METRICS_PORT_ENV, "value": str(settings.progress_port)},
        {"name": PVC_ROOT_ENV, "value": settings.pvc_mount_root},
        {"name": HF_OFFLINE_ENV, "value": "1"},
        {"name": UNBUFFERED_ENV, "value": "1"},
    ]
    if output_dir:
        env.insert(1, {"name": OUTPUT_ENV, "value": output_dir})
    return env


def render_worker_pod(
    job: FineTuneJob,
    attempt: int,
    rank: int,
    settings: OperatorSettings,
    *,
    config_hash: str | None = None,
) -> dict[str, Any]:
    """Pod ``<job>-a<attempt>-<rank>``, created with the gang scheduling gate."""
    spec = job.spec
    name = str(job.metadata.name)
    res = spec.resources
    labels = {
        naming.LABEL_ROLE: naming.ROLE_WORKER,
        naming.LABEL_ATTEMPT: str(attempt),
        naming.LABEL_RANK: str(rank),
    }
    annotations: dict[str, str] = dict(settings.pod_annotations)
    annotations[naming.ANNOTATION_GPUS] = str(res.nodes * res.gpus_per_node)
    if config_hash:
        annotations[naming.ANNOTATION_CONFIG_HASH] = config_hash
    restart = job.metadata.annotations.get(naming.ANNOTATION_RESTART)
    if restart:
        annotations[naming.ANNOTATION_RESTART] = restart
    annotations[naming.ANNOTATION_SPEC_SECTIONS] = json.dumps(
        spec_sections(job), sort_keys=True, separators=(",", ":")
    )

    store = common.storage(spec, settings, with_output=True)
    container = common.trainer_container(
        spec,
        settings,
        {
            "name": naming.TRAINER_CONTAINER,
            "command": torchrun_command(job, attempt, rank, settings),
            "env": [
                *common.scratch_env(),
                *common.user_env(spec),
                *common.credential_env(spec),
                *contract_env(job, attempt, store.output_dir, settings),
            ],
            "ports": [
                {"name": "metrics", "containerPort": settings.progress_port, "protocol": "TCP"},
                {"name": "rdzv", "containerPort": settings.rendezvous_port, "protocol": "TCP"},
            ],
            "resources": resources(job, settings),
            "volumeMounts": [
                common.config_mount(),
                {"name": common.SHM_VOLUME, "mountPath": "/dev/shm"},
                *common.scratch_mounts(),
                *store.mounts,
            ],
        },
    )

    pod_spec = common.pod_base_spec(spec, settings)
    pod_spec.update(
        {
            "hostname": naming.pod_hostname(name, rank),
            "subdomain": naming.service_name(name),
            "schedulingGates": [{"name": naming.GANG_GATE}],
            "terminationGracePeriodSeconds": settings.termination_grace_period_seconds,
            "containers": [container],
            "volumes": [
                common.config_volume(name),
                {
                    "name": common.SHM_VOLUME,
                    "emptyDir": {"medium": "Memory", "sizeLimit": res.shared_memory_size()},
                },
                *common.scratch_volumes(),
                *store.volumes,
            ],
            # One pod per node when possible: spreading avoids two ranks fighting for a
            # node's NICs; "preferred" so small clusters can still place the gang.
            "affinity": {
                "podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 100,
                            "podAffinityTerm": {
                                "topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": naming.job_selector(name)},
                            },
                        }
                    ]
                }
            },
        }
    )
    if res.node_selector:
        pod_spec["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in res.tolerations
        ]
    if res.priority_class_name:
        pod_spec["priorityClassName"] = res.priority_class_name

    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": common.object_meta(
            job,
            naming.pod_name(name, attempt, rank),
            "worker",
            labels=labels,
            annotations=annotations,
        ),
        "spec": pod_spec,
    }
    return common.adopt(pod, job)
