"""The ModelRollout CRD against a real API server: it installs, the example is accepted,
bad rollouts are refused by the API server itself with the CEL message, and the printer
columns show phase, step and weight."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.devcluster.testing import Cluster, Kubectl

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "kubetune.io_modelrollouts.yaml"
EXAMPLE = REPO / "examples" / "rollout" / "support-bot.yaml"
CRD_NAME = "modelrollouts.kubetune.io"


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> str:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_PATH))
    cluster.wait_established(CRD_NAME)
    return CRD_NAME


def _example(namespace: str, name: str) -> dict[str, Any]:
    doc = dict(yaml.safe_load(EXAMPLE.read_text()))
    doc["metadata"] = {"name": name, "namespace": namespace}
    return doc


def _apply(kubectl: Kubectl, doc: dict[str, Any], dry_run: bool = False) -> Any:
    extra = ["--dry-run=server"] if dry_run else []
    return kubectl("apply", *extra, "-f", "-", input=yaml.safe_dump(doc), check=False)


def test_example_is_accepted_and_listed(crd: str, kubectl: Kubectl, namespace: str) -> None:
    proc = _apply(kubectl, _example(namespace, "support-bot"))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(kubectl("get", "mro", "support-bot", "-o", "json", namespace=namespace).stdout)
    assert got["spec"]["steps"][0] == {"setWeight": 10}
    # defaults filled by the API server from the schema
    assert got["spec"]["analysis"]["metrics"][0]["onNoData"] == "Inconclusive"
    assert got["spec"]["steps"][1]["analysis"] == {"minIntervals": 3, "maxIntervals": 20}
    header = kubectl("get", "modelrollouts", namespace=namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "STEP", "WEIGHT", "CANDIDATE", "BASELINE", "AGE"]


def _step_with_two_kinds(spec: dict[str, Any]) -> None:
    spec["steps"][0] = {"setWeight": 5, "pause": {"durationSeconds": 10}}


def _duplicate_metric(spec: dict[str, Any]) -> None:
    spec["analysis"]["metrics"].append(copy.deepcopy(spec["analysis"]["metrics"][0]))


def _sequential_with_threshold(spec: dict[str, Any]) -> None:
    spec["analysis"]["metrics"][2]["threshold"] = 0.5


def _no_analysis(spec: dict[str, Any]) -> None:
    del spec["analysis"]


def _weight_over_100(spec: dict[str, Any]) -> None:
    spec["steps"][0] = {"setWeight": 150}


def _unknown_placeholder(spec: dict[str, Any]) -> None:
    spec["analysis"]["metrics"][0]["query"] = 'up{model_name="${modelname}"}'


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_step_with_two_kinds, "a step has exactly one of setWeight, pause or analysis"),
        (_duplicate_metric, "metric names must be unique"),
        (_sequential_with_threshold, "threshold and baseline apply only to query metrics"),
        (_no_analysis, "analysis steps need spec.analysis"),
        (_weight_over_100, "should be less than or equal to 100"),
        (_unknown_placeholder, "spec.analysis.metrics[0].query"),
    ],
    ids=[
        "two-kinds",
        "duplicate-metric",
        "sequential-threshold",
        "no-analysis",
        "weight",
        "unknown-placeholder",
    ],
)
def test_bad_rollout_is_refused_by_the_api_server(
    crd: str, kubectl: Kubectl, namespace: str, mutate: Any, message: str
) -> None:
    doc = _example(namespace, "bad-rollout")
    mutate(doc["spec"])
    proc = _apply(kubectl, doc, dry_run=True)
    assert proc.returncode != 0
    assert message in " ".join(proc.stderr.split()), proc.stderr


def test_target_is_immutable(crd: str, kubectl: Kubectl, namespace: str) -> None:
    doc = _example(namespace, "immutable-target")
    assert _apply(kubectl, doc).returncode == 0
    doc["spec"]["target"]["name"] = "another-route"
    proc = _apply(kubectl, doc)
    assert proc.returncode != 0
    assert "target cannot change after creation" in proc.stderr
