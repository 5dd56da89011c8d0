"""Pieces shared by the rendered objects: metadata, ownership, security, storage, env."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from kubetune.api import FineTuneJob
from kubetune.api.job import FineTuneJobSpec
from kubetune.api.locations import input_locations
from kubetune.contract import paths
from kubetune.contract.env import S3_CREDENTIAL_ENV
from kubetune.contract.uris import Scheme, parse_uri, pvc_mount_path
from kubetune_operator import naming
from kubetune_operator.settings import OperatorSettings

CONFIG_DIR = str(paths.DEFAULT_CONFIG_PATH.parent)
CONFIG_VOLUME = "config"
SHM_VOLUME = "dshm"
SCRATCH_VOLUME = "scratch-output"
# The root filesystem is read-only: what the trainer (torchrun, tempfile, caches under
# $HOME such as the s3:// download cache, Triton and DeepSpeed builds) writes goes to
# emptyDirs, which count against the container's ephemeral-storage limit.
TMP_VOLUME = "tmp"
TMP_DIR = "/tmp"
HOME_VOLUME = "home"
HOME_DIR = "/home/kubetune"


def job_body(job: FineTuneJob) -> dict[str, Any]:
    """The owner as a dict with apiVersion/kind/metadata, for owner references."""
    return {
        "apiVersion": job.api_version,
        "kind": job.kind,
        "metadata": {"name": job.metadata.name, "uid": job.metadata.uid},
    }


def object_meta(
    job: FineTuneJob,
    name: str,
    component: str,
    *,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Metadata of an owned object: name, namespace, labels, annotations."""
    job_name = str(job.metadata.name)
    meta: dict[str, Any] = {
        "name": name,
        "namespace": job.metadata.namespace or "default",
        "labels": {**naming.common_labels(job_name, component), **(labels or {})},
    }
    # A job name too long for a label value travels as an annotation.
    all_annotations = {**naming.job_annotations(job_name), **(annotations or {})}
    if all_annotations:
        meta["annotations"] = all_annotations
    return meta


def adopt(obj: dict[str, Any], job: FineTuneJob) -> dict[str, Any]:
    """Make ``job`` the controller owner of ``obj`` so garbage collection deletes it with the
    job (no finalizer on the FineTuneJob needed)."""
    kopf.append_owner_reference(obj, owner=cast(kopf.Body, job_body(job)))
    return obj


def pod_security_context(settings: OperatorSettings) -> dict[str, Any]:
    """Pod-level settings that satisfy the ``restricted`` Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "runAsUser": settings.run_as_user,
        "runAsGroup": settings.run_as_group,
        "fsGroup": settings.fs_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Container-level settings that satisfy the ``restricted`` Pod Security Standard, plus a
    read-only root filesystem (writable places: :func:`scratch_volumes`)."""
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def scratch_volumes() -> list[dict[str, Any]]:
    """The writable emptyDirs every kubetune container gets (``/tmp`` and ``$HOME``)."""
    return [{"name": TMP_VOLUME, "emptyDir": {}}, {"name": HOME_VOLUME, "emptyDir": {}}]


def scratch_mounts() -> list[dict[str, Any]]:
    return [
        {"name": TMP_VOLUME, "mountPath": TMP_DIR, "readOnly": False},
        {"name": HOME_VOLUME, "mountPath": HOME_DIR, "readOnly": False},
    ]


def scratch_env() -> list[dict[str, Any]]:
    """``HOME``/``TMPDIR`` on the writable emptyDirs (a user's ``spec.env`` may override)."""
    return [{"name": "HOME", "value": HOME_DIR}, {"name": "TMPDIR", "value": TMP_DIR}]


def with_ephemeral_storage(amounts: Mapping[str, str], size: str) -> dict[str, str]:
    """``amounts`` plus ``ephemeral-storage`` (when ``size`` is set): the container's writable
    layer, logs and emptyDirs are bounded, so a runaway job is evicted instead of filling
    the node's disk."""
    out = dict(amounts)
    if size:
        out["ephemeral-storage"] = size
    return out


@dataclass
class Storage:
    """Volumes, mounts and env for the job's data locations."""

    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    output_dir: str | None = None


def storage(spec: FineTuneJobSpec, settings: OperatorSettings, *, with_output: bool) -> Storage:
    """PVC volumes (read-only unless the claim holds the output) mounted where the trainer
    looks for them: ``<pvc root>/<claim>``."""
    inputs = [parse_uri(uri) for uri in input_locations(spec)]
    claims = {uri.name: True for uri in inputs if uri.scheme is Scheme.PVC}  # -> read-only
    out = Storage()
    if with_output:
        output = parse_uri(spec.output.uri)
        local = output.local_path(settings.pvc_mount_root)
        if output.scheme is Scheme.PVC:
            claims[output.name] = False
        if local is not None:
            out.output_dir = str(local)
        else:  # s3:// -- a scratch directory the trainer uploads from
            out.output_dir = settings.scratch_output_dir
            out.volumes.append({"name": SCRATCH_VOLUME, "emptyDir": {}})
            out.mounts.append({"name": SCRATCH_VOLUME, "mountPath": settings.scratch_output_dir})
    for index, (claim, read_only) in enumerate(sorted(claims.items())):
        volume = f"pvc-{index}"
        out.volumes.append(
            {
                "name": volume,
                "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only},
            }
        )
        out.mounts.append(
            {
                "name": volume,
                "mountPath": str(pvc_mount_path(claim, settings.pvc_mount_root)),
                "readOnly": read_only,
            }
        )
    return out


def credentials_secret(spec: FineTuneJobSpec) -> tuple[str | None, list[str]]:
    """The Secret whose keys become the trainer's ``AWS_*`` variables, and the names of any
    other Secrets that were referenced (the trainer has one set of S3 credentials)."""
    names = [
        ref.name
        for ref in (
            spec.model.credentials_secret_ref,
            spec.dataset.credentials_secret_ref,
            spec.output.credentials_secret_ref,
        )
        if ref is not None
    ]
    if not names:
        return None, []
    chosen = names[0]
    return chosen, sorted({n for n in names if n != chosen})


def credential_env(spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    """S3 credentials by reference only (``secretKeyRef``): never copied into the pod spec."""
    secret, _ = credentials_secret(spec)
    if secret is None:
        return []
    return [
        {
            "name": key,
            "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}},
        }
        for key, optional in S3_CREDENTIAL_ENV
    ]


def user_env(spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    """``spec.env`` in the Kubernetes shape (camelCase, no nulls)."""
    return [e.model_dump(mode="json", by_alias=True, exclude_none=True) for e in spec.env]


def config_volume(job_name: str) -> dict[str, Any]:
    return {
        "name": CONFIG_VOLUME,
        "configMap": {
            "name": naming.config_map_name(job_name),
            "items": [{"key": naming.CONFIG_KEY, "path": paths.DEFAULT_CONFIG_PATH.name}],
        },
    }


def config_mount() -> dict[str, Any]:
    return {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True}


def image_of(spec: FineTuneJobSpec, settings: OperatorSettings) -> str:
    return spec.image or settings.trainer_image


def pull_policy(spec: FineTuneJobSpec, settings: OperatorSettings) -> str | None:
    return spec.image_pull_policy or settings.image_pull_policy


def trainer_container(
    spec: FineTuneJobSpec, settings: OperatorSettings, fields: Mapping[str, Any]
) -> dict[str, Any]:
    """A trainer-image container with what every kubetune container shares: restricted
    security context, the termination message the operator reads, the pull policy."""
    container: dict[str, Any] = {
        "image": image_of(spec, settings),
        **fields,
        "securityContext": container_security_context(),
        "terminationMessagePath": str(paths.TERMINATION_LOG),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    policy = pull_policy(spec, settings)
    if policy:
        container["imagePullPolicy"] = policy
    return container


def pod_base_spec(spec: FineTuneJobSpec, settings: OperatorSettings) -> dict[str, Any]:
    """Fields every pod of the job shares: no API token, restricted security, pull secrets."""
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(settings),
    }
    if spec.service_account_name:
        pod["serviceAccountName"] = spec.service_account_name
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    return pod
