"""spec.dataset.provenance: the validation pod mounts the allow-list ConfigMap, optional,
read-only; training pods and jobs without an allow-list do not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubetune.api import FineTuneJob
from kubetune.contract.provenance import ALLOW_LIST_DIR, VOLUME
from kubetune_operator.render import render_validation_pod, render_worker_pod
from kubetune_operator.settings import OperatorSettings
from tests.unit.operator.test_render import restricted_violations

PROVENANCE = {"requireApproved": True, "allowListRef": {"name": "approved-data"}}


def _job(manifest: Callable[..., dict[str, Any]], provenance: dict[str, Any] | None) -> FineTuneJob:
    dataset: dict[str, Any] = {"train": "pvc://data/train.jsonl", "format": "chat"}
    if provenance is not None:
        dataset["provenance"] = provenance
    return FineTuneJob.model_validate(manifest(dataset=dataset))


def test_validation_pod_mounts_the_allow_list_optional_and_read_only(
    manifest: Callable[..., dict[str, Any]], settings: OperatorSettings
) -> None:
    pod = render_validation_pod(_job(manifest, PROVENANCE), 1, settings)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    # optional: a missing ConfigMap is the trainer's clear error, never ContainerCreating
    assert volumes[VOLUME] == {
        "name": VOLUME,
        "configMap": {"name": "approved-data", "optional": True},
    }
    mounts = {m["name"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts[VOLUME] == {"name": VOLUME, "mountPath": str(ALLOW_LIST_DIR), "readOnly": True}
    assert restricted_violations(pod) == []


def test_recording_only_allow_list_is_mounted_too(
    manifest: Callable[..., dict[str, Any]], settings: OperatorSettings
) -> None:
    job = _job(manifest, {"allowListRef": {"name": "approved-data", "key": "list.txt"}})
    pod = render_validation_pod(job, 1, settings)
    assert VOLUME in {v["name"] for v in pod["spec"]["volumes"]}


def test_no_allow_list_no_volume(
    manifest: Callable[..., dict[str, Any]], settings: OperatorSettings
) -> None:
    pod = render_validation_pod(_job(manifest, None), 1, settings)
    assert VOLUME not in {v["name"] for v in pod["spec"]["volumes"]}


def test_training_pods_do_not_mount_it(
    manifest: Callable[..., dict[str, Any]], settings: OperatorSettings
) -> None:
    pod = render_worker_pod(_job(manifest, PROVENANCE), 1, 0, settings)
    assert VOLUME not in {v["name"] for v in pod["spec"]["volumes"]}
