"""Operator configuration: defaults, then ``KUBETUNE_OPERATOR_*`` environment, then flags.

Everything a test needs to make the operator fast (short backoffs, a progress URL template
for fake pod IPs, short leases) is ordinary configuration: production runs the same code
with the defaults.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kubetune.contract.paths import DEFAULT_METRICS_PORT, DEFAULT_PVC_ROOT, PROGRESS_PORT_PATH

ENV_PREFIX = "KUBETUNE_OPERATOR_"
DEFAULT_TRAINER_IMAGE = "kubetune/trainer:0.1.0"


def _default_identity() -> str:
    return f"{socket.gethostname()}_{os.getpid()}"


def _default_lease_namespace() -> str:
    # The Downward API gives the pod its namespace; a dev run falls back to kubetune-system.
    return os.environ.get("POD_NAMESPACE") or "kubetune-system"


class OperatorSettings(BaseModel):
    """How the operator behaves. Field names map to ``KUBETUNE_OPERATOR_<NAME_UPPER>``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # -- scope and connection -----------------------------------------------------------------
    namespaces: list[str] = Field(
        default_factory=list, description="Namespaces to serve; empty means cluster-wide."
    )
    kubeconfig: str | None = Field(default=None, description="Kubeconfig; default in-cluster.")
    context: str | None = Field(default=None, description="Kubeconfig context.")
    api_concurrency: int = Field(default=64, ge=1, description="Parallel API requests.")
    workers: int = Field(default=32, ge=1, description="Jobs reconciled in parallel.")
    watch_nodes: bool = Field(
        default=True, description="Watch Nodes to detect lost nodes (needs nodes list/watch)."
    )
    kueue: Literal["auto", "enabled", "disabled"] = Field(
        default="auto",
        description="Kueue integration (a Workload per job with runPolicy.queueName): auto = "
        "on when the API server serves kueue.x-k8s.io/v1beta2 workloads at startup.",
    )

    # -- trainer pods -------------------------------------------------------------------------
    trainer_image: str = Field(default=DEFAULT_TRAINER_IMAGE, min_length=1)
    image_pull_policy: str | None = Field(default=None)
    pod_annotations: dict[str, str] = Field(
        default_factory=dict, description="Extra annotations on training pods."
    )
    termination_grace_period_seconds: int = Field(
        default=120, ge=0, description="Time the trainer gets to checkpoint after SIGTERM."
    )
    run_as_user: int = Field(default=1000, ge=1)
    run_as_group: int = Field(default=1000, ge=1)
    fs_group: int = Field(default=1000, ge=1)
    rendezvous_port: int = Field(default=29400, ge=1, le=65535)
    pvc_mount_root: str = Field(default=str(DEFAULT_PVC_ROOT))
    scratch_output_dir: str = Field(
        default="/workspace/output",
        description="Local output directory for s3:// outputs (an emptyDir the trainer "
        "uploads from).",
    )

    ephemeral_storage: str = Field(
        default="50Gi",
        description="ephemeral-storage request and limit of every training container: its "
        "writable /tmp and $HOME emptyDirs (the s3:// download cache) and the s3:// output "
        "staging directory count against it; empty for none.",
    )
    network_policy: bool = Field(
        default=True,
        description="Create a NetworkPolicy per job admitting ingress to its pods only from "
        "the gang itself and from the operator (needs networkpolicies create).",
    )
    operator_namespace: str = Field(
        default_factory=_default_lease_namespace,
        description="Namespace of the operator's pods (the NetworkPolicy admits them to the "
        "progress/metrics port).",
    )
    operator_pod_labels: dict[str, str] = Field(
        default_factory=lambda: {"app.kubernetes.io/name": "kubetune-operator"},
        description="Labels of the operator's pods (the NetworkPolicy admits them).",
    )
    metrics_scrape_namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces (e.g. where Prometheus runs) whose pods may also reach the "
        "trainers' metrics port through the per-job NetworkPolicy.",
    )

    # -- what a FineTuneJob may ask for (tenant policy) ---------------------------------------
    allowed_images: list[str] = Field(
        default_factory=list,
        description="Glob patterns of images a job may run (spec.image); empty means only the "
        "repository of trainer_image (any tag or digest); '*' allows any image.",
    )
    allowed_service_accounts: list[str] = Field(
        default_factory=lambda: ["default"],
        description="Glob patterns of ServiceAccounts a job's pods may run as; '*' any.",
    )
    allowed_priority_classes: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Glob patterns of priority classes a job may use. Names starting with "
        "'system-' are refused unless listed literally (a glob never admits them).",
    )
    allowed_toleration_keys: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Glob patterns of taint keys a job may tolerate. Names in the "
        "kubernetes.io and k8s.io domains (node lifecycle, control plane) are refused unless "
        "listed literally; a toleration without a key (tolerates every taint) needs "
        "allow_tolerate_all_taints.",
    )
    allow_tolerate_all_taints: bool = Field(
        default=False,
        description="Allow a toleration with an empty key (operator Exists: every taint).",
    )

    # -- validation ---------------------------------------------------------------------------
    validation_enabled: bool = Field(
        default=True, description="Run the CPU-only validate-only pod before asking for GPUs."
    )
    validation_timeout_seconds: int = Field(default=600, ge=5)
    validation_cpu: str = Field(default="500m")
    validation_memory: str = Field(default="1Gi")
    validation_ephemeral_storage: str = Field(
        default="4Gi", description="ephemeral-storage request and limit of validation pods."
    )
    validation_reruns: int = Field(
        default=2, ge=0, description="Re-runs after infrastructure failures of validation."
    )
    validation_pod_annotations: dict[str, str] = Field(
        default_factory=dict,
        description="Extra annotations on validation pods (e.g. to opt out of sidecars).",
    )
    validation_node_selector: dict[str, str] = Field(default_factory=dict)

    # -- restarts and placement ---------------------------------------------------------------
    backoff_base_seconds: float = Field(default=10.0, gt=0)
    backoff_max_seconds: float = Field(default=300.0, gt=0)
    unschedulable_retry_seconds: float = Field(
        default=60.0, gt=0, description="Wait before re-creating a gang released as unschedulable."
    )
    partial_gang_grace_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How long part of a gang may stay placed while the scheduler reports "
        "the rest unschedulable (room taken by workloads the operator cannot see) before "
        "the gang is released, so that it never holds GPUs it cannot use.",
    )
    capacity_recheck_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How often a gang kept gated for want of room checks again.",
    )
    node_lost_grace_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How long a node may be NotReady before its pods count as lost.",
    )
    startup_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description="How long placed pods may fail to start (image pull errors, a missing "
        "Secret/ConfigMap, volumes not mounting) before the gang is released as a failed "
        "attempt (its GPUs freed; counted against backoffLimit). Also bounds a validation "
        "pod that cannot start.",
    )

    status_coalesce_seconds: float = Field(
        default=1.0,
        ge=0,
        description="Cosmetic status changes (summary, messages, progress numbers) of a job "
        "are written at most this often; phase and condition changes at once.",
    )

    # -- progress -----------------------------------------------------------------------------
    progress_port: int = Field(default=DEFAULT_METRICS_PORT, ge=1, le=65535)
    progress_url_template: str = Field(
        default="http://{pod_ip}:{port}" + PROGRESS_PORT_PATH,
        description="URL of the rank-0 progress document; fields: pod_ip, port, pod, "
        "namespace, job, attempt.",
    )
    resync_seconds: float = Field(
        default=300.0,
        ge=0,
        description="How often the caches are checked against a fresh LIST of jobs and pods "
        "(deletions a watch re-list after 410 Gone never reports); 0 turns it off.",
    )
    progress_interval_seconds: float = Field(default=15.0, gt=0, le=30.0)
    progress_timeout_seconds: float = Field(default=3.0, gt=0)

    # -- ModelRollout analysis ----------------------------------------------------------------
    rollout_prometheus_url: str = Field(
        default="http://prometheus-operated.monitoring:9090",
        pattern=r"^https?://\S+$",
        description="Prometheus HTTP API a ModelRollout's analysis queries when its "
        "spec.analysis.prometheus is not set.",
    )
    rollout_prometheus_timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="Time limit of one analysis query."
    )

    # -- leader election ----------------------------------------------------------------------
    leader_election: bool = Field(default=True)
    lease_name: str = Field(default="kubetune-operator")
    lease_namespace: str = Field(default_factory=_default_lease_namespace)
    lease_duration_seconds: float = Field(default=15.0, gt=0)
    renew_deadline_seconds: float = Field(default=10.0, gt=0)
    retry_period_seconds: float = Field(default=2.0, gt=0)
    identity: str = Field(default_factory=_default_identity)

    # -- serving ------------------------------------------------------------------------------
    metrics_port: int = Field(default=8080, ge=0, le=65535)
    metrics_host: str = Field(default="0.0.0.0")
    log_level: str = Field(default="INFO")

    @field_validator("renew_deadline_seconds")
    @classmethod
    def _renew_before_expiry(cls, value: float, info: Any) -> float:
        duration = info.data.get("lease_duration_seconds")
        if duration is not None and value >= duration:
            raise ValueError("renew_deadline_seconds must be shorter than lease_duration_seconds")
        return value

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> OperatorSettings:
        """Defaults, overlaid with ``KUBETUNE_OPERATOR_*`` variables, overlaid with ``overrides``.

        Lists are comma-separated, mappings are JSON objects, booleans true/false/1/0.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None:
                continue
            annotation = str(field.annotation)
            if annotation.startswith("list"):
                values[name] = [part.strip() for part in raw.split(",") if part.strip()]
            elif annotation.startswith("dict"):
                values[name] = json.loads(raw) if raw.strip() else {}
            else:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    def image_patterns(self) -> list[str]:
        """``allowed_images``, or by default the trainer image's repository (any tag/digest)."""
        if self.allowed_images:
            return list(self.allowed_images)
        repository = image_repository(self.trainer_image)
        return [self.trainer_image, f"{repository}:*", f"{repository}@*"]


def image_repository(image: str) -> str:
    """``registry/path/name`` of an image reference (tag and digest removed)."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name
