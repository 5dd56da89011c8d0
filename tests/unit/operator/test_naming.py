"""Derived names are valid for every valid job name (long, dotted, starting with a digit)
and unique per job, attempt and rank (issue 9, #16)."""

from __future__ import annotations

import re

import pytest

from kubetune.api import FineTuneJob
from kubetune.api.resolve import ResolvedJob, resolve
from kubetune.api.validation import validate_manifest
from kubetune_operator import naming, queueing
from kubetune_operator.observed import PodView
from kubetune_operator.render import (
    render_config_map,
    render_service,
    render_validation_pod,
    render_worker_pod,
)
from kubetune_operator.render.pods import master_address
from kubetune_operator.settings import OperatorSettings
from tests.fixtures.manifests import minimal_manifest
from tests.unit.operator.conftest import FakeCluster, job_manifest

DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

NAMES = [
    "tune",
    "llama3.1-8b-sft",
    "3b-sft",
    "a" * 52,
    "a" * 53,
    "a" * 63,
    "a" * 64,
    "x" * 246,
    "m" * 253,
    ".".join(["llama3"] * 36),  # 251 characters, dots throughout
    "org.team-a.llama-3.1-70b-instruct.dpo-round-2",
]


def is_label(name: str, pattern: re.Pattern[str] = DNS_1123_LABEL) -> bool:
    return len(name) <= 63 and bool(pattern.match(name))


def is_subdomain(name: str) -> bool:
    return len(name) <= 253 and bool(DNS_SUBDOMAIN.match(name))


@pytest.mark.parametrize("job", NAMES)
def test_every_valid_job_name_is_accepted(job: str) -> None:
    doc = minimal_manifest()
    doc["metadata"]["name"] = job
    report = validate_manifest(doc)
    assert report.ok, [str(p) for p in report.errors]


@pytest.mark.parametrize("job", NAMES)
def test_every_derived_name_is_valid(job: str) -> None:
    assert is_label(naming.service_name(job), DNS_1035_LABEL)  # Service: DNS-1035 label
    assert naming.service_name(job) == naming.short_name(job)
    assert is_subdomain(naming.config_map_name(job))
    assert is_label(naming.job_label_value(job), LABEL_VALUE)
    assert is_label(queueing.workload_name(job, "f" * 64), LABEL_VALUE)  # a Workload name
    for attempt in (1, 2, 101, 999_999_999):
        for rank in (0, 1, 511):
            assert is_subdomain(naming.pod_name(job, attempt, rank))
    for rank in (0, 1, 511):
        assert is_label(naming.pod_hostname(job, rank))  # hostname: DNS-1123 label
    for run in (1, 3, 1000):
        assert is_subdomain(naming.validation_pod_name(job, run))


@pytest.mark.parametrize("job", NAMES)
def test_derived_names_are_unique_per_attempt_and_rank(job: str) -> None:
    pods = [naming.pod_name(job, a, r) for a in range(1, 12) for r in range(0, 12)]
    pods += [naming.validation_pod_name(job, run) for run in range(1, 12)]
    assert len(set(pods)) == len(pods)
    hosts = [naming.pod_hostname(job, r) for r in range(0, 512)]
    assert len(set(hosts)) == len(hosts)


def test_short_names_are_kept_and_long_ones_hashed_stably() -> None:
    assert naming.service_name("support-bot-lora") == "support-bot-lora"
    assert naming.pod_name("support-bot-lora", 2, 1) == "support-bot-lora-a2-1"
    assert naming.pod_hostname("support-bot-lora", 1) == "support-bot-lora-1"
    assert naming.config_map_name("support-bot-lora") == "support-bot-lora-config"
    # dots stay in object names (valid), but not in the Service or hostnames
    assert naming.pod_name("llama3.1-8b-sft", 1, 0) == "llama3.1-8b-sft-a1-0"
    short = naming.short_name("llama3.1-8b-sft")
    assert short.startswith("llama3-1-8b-sft-") and short == naming.short_name("llama3.1-8b-sft")
    assert naming.short_name("3b-sft").startswith("j3b-sft-")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("llama3.1-8b-sft", "llama3-1-8b-sft"),  # same after replacing the dot
        ("a" * 60 + "x", "a" * 60 + "y"),  # same prefix after shortening
        ("x" * 246, "x" * 247),  # pod names of both need shortening
    ],
)
def test_jobs_never_share_derived_names(a: str, b: str) -> None:
    for derive in (
        naming.service_name,
        naming.job_label_value,
        naming.config_map_name,
        lambda j: naming.pod_name(j, 1, 0),
        lambda j: naming.pod_hostname(j, 0),
        lambda j: queueing.workload_name(j, "0" * 64),
        lambda j: naming.validation_pod_name(j, 1),
    ):
        assert derive(a) != derive(b)


LONG_DOTTED = "org.team-a." + "llama-3.1-70b-instruct." * 9 + "sft"


def _job(name: str) -> FineTuneJob:
    return FineTuneJob.model_validate(
        job_manifest(name=name, runPolicy={"queueName": "gpu-training"})
    )


@pytest.mark.parametrize("name", ["llama3.1-8b-sft", LONG_DOTTED])
def test_rendered_objects_resolve_and_point_back_to_the_job(
    name: str, settings: OperatorSettings
) -> None:
    job = _job(name)
    svc = render_service(job, settings)
    pod = render_worker_pod(job, 1, 0, settings)
    other = render_worker_pod(job, 1, 1, settings)
    cm = render_config_map(job, _resolved(job))
    vpod = render_validation_pod(job, 1, settings)
    for obj in (svc, pod, other, cm, vpod):
        assert is_subdomain(obj["metadata"]["name"])
        for key, value in obj["metadata"]["labels"].items():
            assert is_label(value, LABEL_VALUE), (key, value)
        assert naming.job_of(obj["metadata"]) == name
    assert is_label(svc["metadata"]["name"], DNS_1035_LABEL)
    # the pod's DNS name <hostname>.<subdomain> goes through the headless Service
    assert pod["spec"]["subdomain"] == svc["metadata"]["name"]
    assert is_label(pod["spec"]["hostname"])
    assert pod["spec"]["hostname"] != other["spec"]["hostname"]
    assert master_address(job).startswith(f"{pod['spec']['hostname']}.{svc['metadata']['name']}.")
    selector = svc["spec"]["selector"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert PodView.from_body(pod).job == name
    mounted = [v["configMap"]["name"] for v in pod["spec"]["volumes"] if "configMap" in v]
    assert mounted == [cm["metadata"]["name"]]


def _resolved(job: FineTuneJob) -> ResolvedJob:
    return resolve(job)


def test_a_long_dotted_job_runs_through_the_lifecycle() -> None:
    cluster = FakeCluster(job_manifest(name=LONG_DOTTED))
    cluster.start_running()
    assert cluster.status["phase"] == "Running"
    workers = cluster.workers()
    assert len(workers) == 2
    assert all(PodView.from_body(w).job == LONG_DOTTED for w in workers)
