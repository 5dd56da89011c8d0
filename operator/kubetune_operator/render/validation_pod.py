"""The CPU-only validation pod: the trainer image in validate-only mode.

It runs before any GPU is requested, so a missing model, an unreadable dataset or a
config that does not resolve fails the job in seconds instead of after a gang has been
queued for GPUs. Tiny requests, no GPU, no output volume, restricted security.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kubetune.api import FineTuneJob
from kubetune.contract import paths, provenance
from kubetune.contract.env import (
    CONFIG_ENV,
    HF_OFFLINE_ENV,
    OUTPUT_ENV,
    PVC_ROOT_ENV,
    UNBUFFERED_ENV,
    VALIDATE_ONLY_ENV,
)
from kubetune.contract.launch import TRAINER_MODULE
from kubetune_operator import naming
from kubetune_operator.render import common
from kubetune_operator.settings import OperatorSettings

VALIDATE_COMMAND = ["python", "-m", TRAINER_MODULE, "--validate-only"]


def allow_list_volumes(job: FineTuneJob) -> list[dict[str, Any]]:
    """The ConfigMap of approved digests (``spec.dataset.provenance.allowListRef``), as an
    ``optional`` volume: a missing ConfigMap or key must not leave the pod in
    ContainerCreating; the trainer finds the file absent and fails validation saying so.
    The operator never reads it (no ConfigMap rights needed in the job's namespace)."""
    prov = job.spec.dataset.provenance
    if prov is None or prov.allow_list_ref is None:
        return []
    return [
        {
            "name": provenance.VOLUME,
            "configMap": {"name": prov.allow_list_ref.name, "optional": True},
        }
    ]


def allow_list_mounts(job: FineTuneJob) -> list[dict[str, Any]]:
    if not allow_list_volumes(job):
        return []
    return [
        {
            "name": provenance.VOLUME,
            "mountPath": str(provenance.ALLOW_LIST_DIR),
            "readOnly": True,
        }
    ]


def render_validation_pod(
    job: FineTuneJob,
    run: int,
    settings: OperatorSettings,
    avoid_nodes: Sequence[str] = (),
) -> dict[str, Any]:
    """Pod ``<job>-validate-<run>``; ``avoid_nodes``: where an earlier run was lost (a
    rerun must not land on the node that just failed it)."""
    spec = job.spec
    name = str(job.metadata.name)
    store = common.storage(spec, settings, with_output=False)
    # The trainer resolves its output directory even in validate-only mode (and refuses an
    # s3:// output without one); a directory that does not exist here is fine for it.
    output_dir = common.storage(spec, settings, with_output=True).output_dir
    amounts = common.with_ephemeral_storage(
        {"cpu": settings.validation_cpu, "memory": settings.validation_memory},
        settings.validation_ephemeral_storage,
    )
    container = common.trainer_container(
        spec,
        settings,
        {
            "name": naming.VALIDATION_CONTAINER,
            "command": list(VALIDATE_COMMAND),
            "env": [
                *common.scratch_env(),
                *common.user_env(spec),
                *common.credential_env(spec),
                {"name": CONFIG_ENV, "value": str(paths.DEFAULT_CONFIG_PATH)},
                {"name": VALIDATE_ONLY_ENV, "value": "1"},
                *([{"name": OUTPUT_ENV, "value": output_dir}] if output_dir else []),
                {"name": PVC_ROOT_ENV, "value": settings.pvc_mount_root},
                {"name": HF_OFFLINE_ENV, "value": "1"},
                {"name": UNBUFFERED_ENV, "value": "1"},
            ],
            "resources": {"requests": dict(amounts), "limits": dict(amounts)},
            "volumeMounts": [
                common.config_mount(),
                *common.scratch_mounts(),
                *store.mounts,
                *allow_list_mounts(job),
            ],
        },
    )
    pod_spec = common.pod_base_spec(spec, settings)
    pod_spec.update(
        {
            "activeDeadlineSeconds": settings.validation_timeout_seconds,
            "terminationGracePeriodSeconds": 10,
            "containers": [container],
            "volumes": [
                common.config_volume(name),
                *common.scratch_volumes(),
                *store.volumes,
                *allow_list_volumes(job),
            ],
        }
    )
    if settings.validation_node_selector:
        pod_spec["nodeSelector"] = dict(settings.validation_node_selector)
    if spec.resources.tolerations:
        # The job's own tolerations (already within the operator's allow-list): nodes its
        # training may use may also check its inputs (a dedicated, tainted pool).
        pod_spec["tolerations"] = [
            t.model_dump(mode="json", by_alias=True, exclude_none=True)
            for t in spec.resources.tolerations
        ]
    if avoid_nodes:
        pod_spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchFields": [
                                {
                                    "key": "metadata.name",
                                    "operator": "NotIn",
                                    "values": sorted(set(avoid_nodes)),
                                }
                            ]
                        }
                    ]
                }
            }
        }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": common.object_meta(
            job,
            naming.validation_pod_name(name, run),
            "validation",
            labels={
                naming.LABEL_ROLE: naming.ROLE_VALIDATION,
                naming.LABEL_VALIDATION_RUN: str(run),
            },
            annotations=settings.validation_pod_annotations or None,
        ),
        "spec": pod_spec,
    }
    return common.adopt(pod, job)
