"""A FineTunePipeline run by the real operator on the real control plane: one FineTuneJob per
stage, created in order and owned by the pipeline, outputs wired into later stages, a failed
stage retried without re-running the finished one (KWOK plays the kubelets; tests play the
trainer, as in test_operator_lifecycle)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from kubetune.devcluster.testing import Cluster, wait_until
from tests.e2e.operator_helpers import (  # noqa: F401  (fixtures)
    Operators,
    finish_pod,
    finish_validation,
    job,
    kget,
    manifest,
    ns_fixture,
    operator_fixture,
    operators_fixture,
    wait_phase,
    worker_pods,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def pipeline(name: str, namespace: str) -> dict[str, Any]:
    base = manifest("unused", namespace)["spec"]
    creds = base["output"]["credentialsSecretRef"]
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTunePipeline",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "output": {"uri": f"s3://results/{name}"},
            "defaults": {
                "model": base["model"],
                "resources": base["resources"],
                "runPolicy": base["runPolicy"],
                "hyperparameters": base["hyperparameters"],
                "output": {"credentialsSecretRef": creds},
            },
            "stages": [
                {"name": "sft", "spec": {"method": "lora", "dataset": base["dataset"]}},
                {
                    "name": "rm",
                    "inputs": {"model": "sft"},
                    "spec": {
                        "method": "reward",
                        "dataset": {"train": "/data/pref.jsonl", "format": "preference"},
                    },
                },
                {
                    "name": "grpo",
                    "inputs": {"model": "sft", "rewardModel": "rm"},
                    "spec": {
                        "method": "grpo",
                        "dataset": {"train": "/data/prompts.jsonl", "format": "promptOnly"},
                    },
                },
            ],
        },
    }


def status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    doc = kget(cluster, "finetunepipeline", name, namespace=namespace)
    return doc.get("status") or {}


def stage_phases(cluster: Cluster, namespace: str, name: str) -> dict[str, str]:
    return {s["name"]: s.get("phase") for s in status(cluster, namespace, name).get("stages", [])}


def created(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = wait_until(
        lambda: job(cluster, namespace, name) if _exists(cluster, namespace, name) else None,
        timeout=60,
        what=f"FineTuneJob {name}",
    )
    return found


def _exists(cluster: Cluster, namespace: str, name: str) -> bool:
    got = cluster.kubectl("get", "ftj", name, namespace=namespace, check=False)
    return got.returncode == 0


def run_stage(cluster: Cluster, namespace: str, name: str, exit_code: int = 0) -> None:
    """Play the stage's trainer: validation passes, the gang runs and exits with ``exit_code``."""
    finish_validation(cluster, namespace, name)
    wait_phase(cluster, namespace, name, "Running", timeout=60)
    gang = worker_pods(cluster, namespace, name)
    if exit_code:  # rank 0 fails; the operator then stops the rest of the gang
        message = "KL to the reference 48 > ceiling 30"
        finish_pod(cluster, namespace, gang[0]["metadata"]["name"], exit_code, message=message)
        return
    for pod in gang:
        finish_pod(cluster, namespace, pod["metadata"]["name"], 0)


def test_stages_run_in_order_wired_owned_and_a_retry_reruns_only_the_failed_one(
    cluster: Cluster, ns: str, operator: Operators
) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(pipeline("chain", ns)))
    uid = kget(cluster, "finetunepipeline", "chain", namespace=ns)["metadata"]["uid"]

    sft = created(cluster, ns, "chain-sft")
    (owner,) = sft["metadata"]["ownerReferences"]
    assert owner["kind"] == "FineTunePipeline" and owner["uid"] == uid and owner["controller"]
    assert sft["metadata"]["labels"]["kubetune.io/stage"] == "sft"
    assert sft["spec"]["output"]["uri"] == "s3://results/chain/sft"
    assert not _exists(cluster, ns, "chain-rm"), "one stage at a time"
    run_stage(cluster, ns, "chain-sft")
    wait_phase(cluster, ns, "chain-sft", "Succeeded")

    rm = created(cluster, ns, "chain-rm")
    assert rm["spec"]["model"]["uri"] == "s3://results/chain/sft"  # sft's output wired in
    lineage = json.loads(rm["metadata"]["annotations"]["kubetune.io/pipeline-lineage"])
    assert "chain-sft" in json.dumps(lineage)
    first_rm = rm["metadata"]["uid"]
    run_stage(cluster, ns, "chain-rm", exit_code=79)  # permanent: NumericalDivergence
    wait_phase(cluster, ns, "chain-rm", "Failed")
    wait_until(
        lambda: status(cluster, ns, "chain").get("phase") == "Failed",
        timeout=60,
        what="the pipeline Failed",
    )
    failed = status(cluster, ns, "chain")
    assert stage_phases(cluster, ns, "chain") == {
        "sft": "Succeeded",
        "rm": "Failed",
        "grpo": "Waiting",
    }
    rm_status = next(s for s in failed["stages"] if s["name"] == "rm")
    assert "ceiling 30" in (rm_status.get("message") or "") + (failed.get("message") or "")
    assert not _exists(cluster, ns, "chain-grpo")

    # retry: only the failed stage's job is replaced; the finished one is left alone
    sft_uid = job(cluster, ns, "chain-sft")["metadata"]["uid"]
    cluster.kubectl(
        "patch", "finetunepipeline", "chain", "--type=merge",
        "-p", json.dumps({"spec": {"retryGeneration": 1}}), namespace=ns,
    )  # fmt: skip
    wait_until(
        lambda: (
            _exists(cluster, ns, "chain-rm")
            and job(cluster, ns, "chain-rm")["metadata"]["uid"] != first_rm
        ),
        timeout=60,
        what="the rm stage re-created",
    )
    assert job(cluster, ns, "chain-sft")["metadata"]["uid"] == sft_uid
    assert job(cluster, ns, "chain-sft")["status"]["phase"] == "Succeeded"
    run_stage(cluster, ns, "chain-rm")
    wait_phase(cluster, ns, "chain-rm", "Succeeded")

    grpo = created(cluster, ns, "chain-grpo")
    assert grpo["spec"]["model"]["uri"] == "s3://results/chain/sft"
    assert grpo["spec"]["rlhf"]["reward"]["model"] == "s3://results/chain/rm"
    run_stage(cluster, ns, "chain-grpo")
    wait_until(
        lambda: status(cluster, ns, "chain").get("phase") == "Succeeded",
        timeout=60,
        what="the pipeline Succeeded",
    )
    assert stage_phases(cluster, ns, "chain") == dict.fromkeys(("sft", "rm", "grpo"), "Succeeded")
    assert status(cluster, ns, "chain")["observedGeneration"] >= 2
