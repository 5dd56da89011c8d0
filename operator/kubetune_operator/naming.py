"""Names, labels and annotations of everything the operator creates.

Names are deterministic (``<job>-a<attempt>-<rank>``) so that a create retried after an
operator crash hits ``AlreadyExists`` instead of making a second gang: the API server, not
the operator's memory, is the source of truth.
"""

from __future__ import annotations

from typing import Final

from kubetune.api import API_VERSION, GROUP, KIND, PLURAL, VERSION

__all__ = ["API_VERSION", "GROUP", "KIND", "PLURAL", "VERSION"]

MANAGER: Final = "kubetune-operator"
FIELD_MANAGER: Final = "kubetune-operator"

LABEL_JOB: Final = "kubetune.io/job-name"
LABEL_ATTEMPT: Final = "kubetune.io/attempt"
LABEL_RANK: Final = "kubetune.io/rank"
LABEL_ROLE: Final = "kubetune.io/role"
LABEL_VALIDATION_RUN: Final = "kubetune.io/validation-run"
ROLE_WORKER: Final = "worker"
ROLE_VALIDATION: Final = "validation"

LABEL_APP_NAME: Final = "app.kubernetes.io/name"
LABEL_APP_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_APP_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_APP_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_APP_MANAGED_BY: Final = "app.kubernetes.io/managed-by"

ANNOTATION_CONFIG_HASH: Final = "kubetune.io/config-hash"
ANNOTATION_GPUS: Final = "kubetune.io/gang-gpus"

#: Scheduling gate held on every pod of a gang until the whole gang exists.
GANG_GATE: Final = "kubetune.io/gang"

# Kueue's plain-pod group integration (https://kueue.sigs.k8s.io/docs/tasks/run/plain_pods/).
KUEUE_QUEUE_LABEL: Final = "kueue.x-k8s.io/queue-name"
KUEUE_GROUP_LABEL: Final = "kueue.x-k8s.io/pod-group-name"
KUEUE_TOTAL_COUNT_ANNOTATION: Final = "kueue.x-k8s.io/pod-group-total-count"
KUEUE_RETRIABLE_ANNOTATION: Final = "kueue.x-k8s.io/retriable-in-group"

TRAINER_CONTAINER: Final = "trainer"
VALIDATION_CONTAINER: Final = "validate"
CONFIG_KEY: Final = "job.json"


def pod_name(job: str, attempt: int, rank: int) -> str:
    """The pod of ``rank`` in gang ``attempt``: ``<job>-a<attempt>-<rank>``."""
    return f"{job}-a{attempt}-{rank}"


def validation_pod_name(job: str, run: int) -> str:
    """The ``run``-th validation pod (re-runs happen only after infrastructure failures)."""
    return f"{job}-validate-{run}"


def config_map_name(job: str) -> str:
    """The ConfigMap holding the resolved spec the trainer reads."""
    return f"{job}-config"


def service_name(job: str) -> str:
    """The headless Service that gives every pod of the gang a stable DNS name."""
    return job


def pod_hostname(job: str, rank: int) -> str:
    """Hostname of the rank's pod; stable across attempts so DNS names do not change."""
    return f"{job}-{rank}"


def kueue_group_name(job: str, attempt: int) -> str:
    """One Kueue pod group per attempt: a new gang is a new workload."""
    return f"{job}-a{attempt}"


def common_labels(job: str, component: str) -> dict[str, str]:
    """Labels every owned object carries (recommended ``app.kubernetes.io`` set + job)."""
    return {
        LABEL_APP_NAME: "kubetune-trainer",
        LABEL_APP_INSTANCE: job,
        LABEL_APP_COMPONENT: component,
        LABEL_APP_PART_OF: "kubetune",
        LABEL_APP_MANAGED_BY: MANAGER,
        LABEL_JOB: job,
    }
