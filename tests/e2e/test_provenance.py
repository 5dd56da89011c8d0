"""spec.dataset.provenance on the real control plane: the API server takes the field (and
refuses requireApproved without a list), the validation pod mounts the allow-list
ConfigMap as an optional volume (no ConfigMap exists: the pod is still created and
scheduled), and the trainer's refusal of an unapproved input ends the job Failed with the
file and its digest in the Validated condition, before any GPU pod."""

from __future__ import annotations

import pytest
import yaml

from kubetune.contract import ExitCode
from kubetune.contract.provenance import ALLOW_LIST_DIR, VOLUME
from kubetune.devcluster.testing import Cluster, wait_until
from tests.e2e.operator_helpers import (  # noqa: F401  (fixtures)
    Operators,
    apply,
    condition,
    finish_validation,
    manifest,
    ns_fixture,
    operator_fixture,
    operators_fixture,
    pods,
    wait_phase,
    worker_pods,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

DIGEST = "3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7"
PROVENANCE = {"requireApproved": True, "allowListRef": {"name": "approved-data"}}


def test_unapproved_dataset_fails_validation_with_file_and_digest(
    cluster: Cluster, ns: str, operator: Operators
) -> None:
    dataset = {"train": "/data/train.jsonl", "format": "chat", "provenance": PROVENANCE}
    apply(cluster, manifest("unapproved", ns, dataset=dataset))
    pod = wait_until(
        lambda: pods(cluster, ns, "unapproved", role="validation"),
        timeout=30,
        what="validation pod",
    )[-1]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes[VOLUME]["configMap"] == {
        "name": "approved-data",
        "optional": True,
        "defaultMode": 420,
    }
    mounts = {m["name"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts[VOLUME]["mountPath"] == str(ALLOW_LIST_DIR) and mounts[VOLUME]["readOnly"]
    message = (
        "dataset.provenance: 1 of 1 data inputs are not on the approved allow-list "
        f"(ConfigMap approved-data, key approved.yaml):\n  train /data/train.jsonl: file "
        f"sha256 {DIGEST}"
    )
    finish_validation(cluster, ns, "unapproved", int(ExitCode.INVALID_DATA), message=message)
    status = wait_phase(cluster, ns, "unapproved", "Failed", timeout=20)
    validated = condition(status, "Validated")
    assert validated["status"] == "False" and validated["reason"] == "InvalidData"
    assert "/data/train.jsonl" in validated["message"] and DIGEST in validated["message"]
    assert not worker_pods(cluster, ns, "unapproved"), "no GPU pod was ever created"


def test_requiring_approval_without_a_list_is_refused_by_the_api_server(
    cluster: Cluster, ns: str
) -> None:
    doc = manifest(
        "nolist",
        ns,
        dataset={
            "train": "/data/train.jsonl",
            "format": "chat",
            "provenance": {"requireApproved": True},
        },
    )
    result = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert result.returncode != 0
    assert "requireApproved needs allowListRef" in result.stderr
