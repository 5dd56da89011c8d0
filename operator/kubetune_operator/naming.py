"""Names, labels and annotations of everything the operator creates.

Names are deterministic (``<job>-a<attempt>-<rank>``) so that a create retried after an
operator crash hits ``AlreadyExists`` instead of making a second gang: the API server, not
the operator's memory, is the source of truth.

A job may have any valid object name (a DNS subdomain of up to 253 characters, dots
allowed), but the headless Service and the pods' hostnames must be DNS-1035 / DNS-1123
labels of at most 63 characters, and label values at most 63 characters. Those are
derived from :func:`short_name`: the job name itself when it already fits, otherwise a
readable prefix plus a stable hash of the whole name, so derived names are always valid
and two jobs never share them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, Final

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
#: The full job name, on objects whose job label had to be shortened (names over 63).
ANNOTATION_JOB: Final = "kubetune.io/job-name"
#: Short hashes of the spec sections a running gang was created from (JSON), to tell a user
#: which edits wait for the next attempt.
ANNOTATION_SPEC_SECTIONS: Final = "kubetune.io/spec-sections"
#: On a FineTuneJob: a new value (any string; Argo CD's restart action writes the time)
#: restarts the gang from its newest checkpoint. Copied onto the pods it created, which is
#: how the operator tells a request already served from a new one.
ANNOTATION_RESTART: Final = "kubetune.io/restart"
ANNOTATION_GPUS: Final = "kubetune.io/gang-gpus"

#: Scheduling gate held on every pod of a gang until the whole gang exists.
GANG_GATE: Final = "kubetune.io/gang"

#: Kueue's queue label (on a FineTuneJob it names the queue, like runPolicy.queueName; the
#: pods never carry it: the job's Workload is what Kueue queues, see queueing.py).
KUEUE_QUEUE_LABEL: Final = "kueue.x-k8s.io/queue-name"

TRAINER_CONTAINER: Final = "trainer"
VALIDATION_CONTAINER: Final = "validate"
CONFIG_KEY: Final = "job.json"


MAX_OBJECT_NAME: Final = 253  # DNS subdomain: pods, ConfigMaps
MAX_LABEL: Final = 63  # DNS label (Service, hostname) and label value
#: Longest short name: room for ``-a<attempt>`` / ``-<rank>`` within a 63-character label.
SHORT_NAME_MAX: Final = 52
_HASH_LEN: Final = 8
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _digest(job: str) -> str:
    return hashlib.sha256(job.encode()).hexdigest()[:_HASH_LEN]


def short_name(job: str) -> str:
    """A DNS-1035 label of at most :data:`SHORT_NAME_MAX` characters for ``job``.

    The job name itself when it already is one (``support-bot-lora``); otherwise dots
    become dashes, a name not starting with a letter gets a ``j`` in front, it is cut to
    fit and a hash of the full name is appended (``llama3-1-8b-sft-1f2e3d4c``), so the
    result is stable for the job and differs between jobs.
    """
    if len(job) <= SHORT_NAME_MAX and _DNS_1035_LABEL.match(job):
        return job
    stem = re.sub(r"[^a-z0-9-]", "-", job.lower())
    if not stem[:1].isalpha():
        stem = "j" + stem
    stem = stem[: SHORT_NAME_MAX - _HASH_LEN - 1].rstrip("-")
    return f"{stem}-{_digest(job)}"


def _object_name(job: str, suffix: str) -> str:
    """``<job><suffix>`` when it is a valid object name, else ``<short name><suffix>``."""
    name = f"{job}{suffix}"
    return name if len(name) <= MAX_OBJECT_NAME else f"{short_name(job)}{suffix}"


def pod_name(job: str, attempt: int, rank: int) -> str:
    """The pod of ``rank`` in gang ``attempt``: ``<job>-a<attempt>-<rank>``."""
    return _object_name(job, f"-a{attempt}-{rank}")


def validation_pod_name(job: str, run: int) -> str:
    """The ``run``-th validation pod (re-runs happen only after infrastructure failures)."""
    return _object_name(job, f"-validate-{run}")


def config_map_name(job: str) -> str:
    """The ConfigMap holding the resolved spec the trainer reads."""
    return _object_name(job, "-config")


def service_name(job: str) -> str:
    """The headless Service that gives every pod of the gang a stable DNS name (a
    DNS-1035 label, also the pods' ``subdomain``)."""
    return short_name(job)


def pod_hostname(job: str, rank: int) -> str:
    """Hostname of the rank's pod; stable across attempts so DNS names do not change."""
    return f"{short_name(job)}-{rank}"


def job_label_value(job: str) -> str:
    """The job's ``kubetune.io/job-name`` label: the name, or its short name when the
    name is longer than a label value may be (the full name is then an annotation)."""
    return job if len(job) <= MAX_LABEL else short_name(job)


def job_annotations(job: str) -> dict[str, str]:
    """The full job name as an annotation, where the label could not hold it."""
    return {} if job_label_value(job) == job else {ANNOTATION_JOB: job}


def job_of(metadata: Mapping[str, Any]) -> str:
    """The job an owned object belongs to, from its metadata (annotation, then label)."""
    annotations = metadata.get("annotations") or {}
    labels = metadata.get("labels") or {}
    return str(annotations.get(ANNOTATION_JOB) or labels.get(LABEL_JOB, ""))


def common_labels(job: str, component: str) -> dict[str, str]:
    """Labels every owned object carries (recommended ``app.kubernetes.io`` set + job)."""
    value = job_label_value(job)
    return {
        LABEL_APP_NAME: "kubetune-trainer",
        LABEL_APP_INSTANCE: value,
        LABEL_APP_COMPONENT: component,
        LABEL_APP_PART_OF: "kubetune",
        LABEL_APP_MANAGED_BY: MANAGER,
        LABEL_JOB: value,
    }


def job_selector(job: str) -> dict[str, str]:
    """Labels that select the job's training pods (Service selector, anti-affinity)."""
    return {LABEL_JOB: job_label_value(job), LABEL_ROLE: ROLE_WORKER}
