"""The FineTunePipeline CRD against a real API server: it installs, the example is accepted
with its defaults filled, and bad pipelines are refused by the API server itself (schema and
CEL) with the messages `kubetune validate` gives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.devcluster.testing import Cluster, Kubectl

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "kubetune.io_finetunepipelines.yaml"
EXAMPLE = REPO / "examples" / "pipelines" / "sft-rm-grpo.yaml"
CRD_NAME = "finetunepipelines.kubetune.io"


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
    proc = _apply(kubectl, _example(namespace, "sft-rm-grpo"))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(kubectl("get", "ftp", "sft-rm-grpo", "-o", "json", namespace=namespace).stdout)
    assert got["spec"]["retryGeneration"] == 0  # defaulted by the API server
    assert got["spec"]["stages"][2]["inputs"] == {"model": "sft", "rewardModel": "rm"}
    # partial specs get no FineTuneJob defaults (they would override the pipeline's defaults)
    assert "resources" not in got["spec"]["stages"][0]["spec"]
    header = kubectl("get", "finetunepipelines", namespace=namespace).stdout.splitlines()[0]
    assert header.split() == ["NAME", "PHASE", "STAGE", "AGE"]


def _duplicate_name(spec: dict[str, Any]) -> None:
    spec["stages"][1]["name"] = "sft"


def _unknown_input(spec: dict[str, Any]) -> None:
    spec["stages"][2]["inputs"]["rewardModel"] = "nope"


def _input_and_field(spec: dict[str, Any]) -> None:
    spec["stages"][2]["spec"]["rlhf"]["reward"] = {"model": "pvc://models/rm"}


def _no_stages(spec: dict[str, Any]) -> None:
    spec["stages"] = []


def _no_method(spec: dict[str, Any]) -> None:
    del spec["stages"][0]["spec"]["method"]


def _method_in_defaults(spec: dict[str, Any]) -> None:
    spec["defaults"]["method"] = "full"


def _bad_type(spec: dict[str, Any]) -> None:
    spec["stages"][0]["spec"]["hyperparameters"]["learningRate"] = "fast"


def _no_output(spec: dict[str, Any]) -> None:
    del spec["output"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_duplicate_name, "stage names must be unique"),
        (_unknown_input, "inputs.rewardModel must name another (earlier) stage"),
        (_input_and_field, "must not set spec.rlhf.reward.model too"),
        (_no_stages, "should have at least 1 items"),
        (_no_method, "spec.stages[0].spec.method: Required value"),
        (_method_in_defaults, 'unknown field "spec.defaults.method"'),
        (_bad_type, "spec.stages[0].spec.hyperparameters.learningRate"),
        (_no_output, "set output.uri"),
    ],
    ids=[
        "duplicate-name",
        "unknown-input",
        "input-and-field",
        "no-stages",
        "no-method",
        "method-in-defaults",
        "bad-type",
        "no-output",
    ],
)
def test_bad_pipeline_is_refused_by_the_api_server(
    crd: str, kubectl: Kubectl, namespace: str, mutate: Any, message: str
) -> None:
    doc = _example(namespace, "bad-pipeline")
    mutate(doc["spec"])
    proc = _apply(kubectl, doc, dry_run=True)
    assert proc.returncode != 0
    assert message in " ".join(proc.stderr.split()), proc.stderr
