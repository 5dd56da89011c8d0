"""Team defaults on the real API server: the profile CRDs, their schema, and a short job
resolved by the operator (running with its least-privilege RBAC) from a
ClusterFineTuneProfile and its namespace's FineTuneProfile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.devcluster.testing import Cluster, wait_until
from tests.e2e.operator_helpers import (  # noqa: F401  (fixtures)
    REPO,
    TRAINER_IMAGE,
    Operators,
    apply,
    condition,
    finish_validation,
    job_status,
    kget,
    ns_fixture,
    operator_fixture,
    operators_fixture,
    pods,
    wait_phase,
    worker_pods,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

PROFILE_CRDS = [
    REPO / "crds" / "kubetune.io_finetuneprofiles.yaml",
    REPO / "crds" / "kubetune.io_clusterfinetuneprofiles.yaml",
]
TEAM_IMAGE = TRAINER_IMAGE.rsplit(":", 1)[0] + ":team"  # allowed: the trainer's repository


@pytest.fixture(scope="module", autouse=True)
def profile_crds(cluster: Cluster) -> None:
    for path in PROFILE_CRDS:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    for name in ("finetuneprofiles", "clusterfinetuneprofiles"):
        wait_until(
            lambda n=name: (
                cluster.kubectl(  # type: ignore[misc]
                    "wait", "--for=condition=Established", f"crd/{n}.kubetune.io", check=False
                ).returncode
                == 0
            ),
            timeout=60,
            what=f"crd/{name} established",
        )


def short_job(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    """An application team's job: what it trains, on what, to where; nothing else."""
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "method": "lora",
            "model": {"uri": "/models/tiny-llama"},
            "dataset": {"train": "/data/train.jsonl", "format": "chat"},
            "output": {"uri": f"s3://results/{name}"},
            **spec,
        },
    }


@pytest.fixture
def team(cluster: Cluster, ns: str) -> Iterator[dict[str, Any]]:
    """A ClusterFineTuneProfile selecting only this test's namespace (by a unique label: the
    operator is shared with other test modules) and the namespace's `default` profile."""
    label = f"pool-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("label", "namespace", ns, f"kubetune.io/gpu-pool={label}")
    cluster_profile: dict[str, Any] = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "ClusterFineTuneProfile",
        "metadata": {"name": f"e2e-{label}"},
        "spec": {
            "description": "e2e GPU pool",
            "namespaceSelector": {"matchLabels": {"kubetune.io/gpu-pool": label}},
            "defaults": {
                "image": TEAM_IMAGE,
                "hyperparameters": {"globalBatchSize": 32, "microBatchSize": 2},
                "resources": {
                    "nodes": 2,
                    "gpusPerNode": 8,
                    "cpu": "8",
                    "memory": "64Gi",
                    "tolerations": [{"key": "kubetune.io/e2e", "operator": "Exists"}],
                },
                "runPolicy": {"schedulingTimeoutSeconds": 10},
            },
            "methods": {"lora": {"hyperparameters": {"learningRate": 1.0e-4}}},
        },
    }
    default = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneProfile",
        "metadata": {"name": "default", "namespace": ns},
        "spec": {
            "defaults": {
                "checkpoint": {"intervalSteps": 50},
                "output": {"credentialsSecretRef": {"name": "s3-creds"}},
            }
        },
    }
    apply(cluster, cluster_profile)
    apply(cluster, default)
    try:
        yield cluster_profile
    finally:
        cluster.kubectl(
            "delete", "clusterfinetuneprofile", cluster_profile["metadata"]["name"], check=False
        )


def resolved_config(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    cm = kget(cluster, "configmap", f"{name}-config", namespace=namespace)
    doc: dict[str, Any] = json.loads(cm["data"]["job.json"])
    return doc


def test_profile_schema_is_enforced_by_the_api_server(cluster: Cluster, ns: str) -> None:
    partial: dict[str, Any] = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneProfile",
        "metadata": {"name": "partial", "namespace": ns},
        # model.uri, dataset.train, output.uri are required in a job, not in a profile.
        "spec": {"defaults": {"model": {"dtype": "bfloat16"}, "resources": {"gpusPerNode": 4}}},
    }
    apply(cluster, partial)
    stored = kget(cluster, "ftprofile", "partial", namespace=ns)
    assert stored["spec"]["defaults"] == partial["spec"]["defaults"], "no defaults filled in"

    bad_enum = json.loads(json.dumps(partial))
    bad_enum["metadata"]["name"] = "bad-enum"
    bad_enum["spec"]["defaults"] = {"distributed": {"strategy": "horovod"}}
    proc = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(bad_enum), check=False)
    assert proc.returncode != 0
    assert "spec.defaults.distributed.strategy" in proc.stderr
    assert "Unsupported value" in proc.stderr

    bad_method = json.loads(json.dumps(partial))
    bad_method["metadata"]["name"] = "bad-method"
    bad_method["spec"] = {"methods": {"sft": {"image": "x"}}}
    proc = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(bad_method), check=False)
    assert proc.returncode != 0 and "methods are keyed by method" in proc.stderr
    assert cluster.kubectl("get", "ftprofile", "bad-enum", namespace=ns, check=False).returncode


def test_short_job_runs_with_its_team_defaults_frozen(
    cluster: Cluster, ns: str, operator: Operators, team: dict[str, Any]
) -> None:
    job = short_job("short", ns)
    assert len(yaml.safe_dump(job).splitlines()) <= 15
    apply(cluster, job)
    status = wait_phase(cluster, ns, "short", "Validating")
    name = team["metadata"]["name"]
    assert [(p["kind"], p["name"], p["section"]) for p in status["profiles"]] == [
        ("ClusterFineTuneProfile", name, "defaults"),
        ("ClusterFineTuneProfile", name, "methods.lora"),
        ("FineTuneProfile", "default", "defaults"),
    ]
    assert all(p["resourceVersion"] for p in status["profiles"])
    assert status["profileDefaults"]["resources"]["gpusPerNode"] == 8
    spec = resolved_config(cluster, ns, "short")["spec"]
    assert spec["image"] == TEAM_IMAGE
    assert spec["resources"]["gpusPerNode"] == 8 and spec["resources"]["nodes"] == 2
    assert spec["hyperparameters"]["learningRate"] == 1.0e-4
    assert spec["checkpoint"]["intervalSteps"] == 50
    assert spec["output"] == {
        "uri": "s3://results/short",
        "credentialsSecretRef": {"name": "s3-creds"},
        "mergeAdapter": False,
    }
    (vpod,) = pods(cluster, ns, "short", role="validation")
    assert vpod["spec"]["containers"][0]["image"] == TEAM_IMAGE

    # The platform team edits the profile while the job runs: the job keeps its defaults.
    edited = json.loads(json.dumps(team))
    edited["spec"]["defaults"]["resources"]["gpusPerNode"] = 4
    edited["spec"]["defaults"]["resources"]["nodes"] = 1
    apply(cluster, edited)
    finish_validation(cluster, ns, "short")
    status = wait_phase(cluster, ns, "short", "Running", timeout=60)
    assert status["gpus"] == 16
    gang = worker_pods(cluster, ns, "short")
    assert len(gang) == 2
    for pod in gang:
        container = pod["spec"]["containers"][0]
        assert container["image"] == TEAM_IMAGE
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert {"key": "kubetune.io/e2e", "operator": "Exists"} in pod["spec"]["tolerations"]
    assert job_status(cluster, ns, "short")["profiles"] == status["profiles"]


def test_job_may_be_created_before_its_named_profile(
    cluster: Cluster, ns: str, operator: Operators, team: dict[str, Any]
) -> None:
    apply(cluster, short_job("early", ns, profile="big-batch"))
    wait_until(
        lambda: (
            condition(job_status(cluster, ns, "early"), "Validated").get("reason")
            == "ProfileNotFound"
        ),
        timeout=30,
        what="early waiting for its profile",
    )
    assert not pods(cluster, ns, "early")
    preset = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneProfile",
        "metadata": {"name": "big-batch", "namespace": ns},
        "spec": {"defaults": {"hyperparameters": {"globalBatchSize": 64}}},
    }
    apply(cluster, preset)
    status = wait_phase(cluster, ns, "early", "Validating", timeout=30)
    assert status["profiles"][-1]["name"] == "big-batch"
    assert resolved_config(cluster, ns, "early")["spec"]["hyperparameters"]["globalBatchSize"] == 64


def test_validate_resolved_reads_profiles_from_the_cluster(
    cluster: Cluster, ns: str, team: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(short_job("cli", ns)))
    env = dict(os.environ)
    env["PATH"] = f"{Path(cluster.kubectl_path).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "kubetune.cli.main", "validate", "--resolved"),
            *("-f", str(path), "--kubeconfig", str(cluster.kubeconfig)),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    lines = proc.stdout.splitlines()
    source = f"ClusterFineTuneProfile/{team['metadata']['name']}"
    assert f"    gpusPerNode: 8  # {source}" in lines
    assert "    intervalSteps: 50  # FineTuneProfile/default" in lines
