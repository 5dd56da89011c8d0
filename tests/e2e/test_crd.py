"""The FineTuneJob CRD against a real API server: it installs, the examples are accepted,
invalid manifests are refused with the schema / CEL message, printer columns and
``kubectl explain`` work."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.devcluster.testing import Cluster, Kubectl, wait_until
from tests.e2e.operator_helpers import stop_shared_operator

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "kubetune.io_finetunejobs.yaml"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
CRD_NAME = "finetunejobs.kubetune.io"
PRINTER_COLUMNS = ["NAME", "PHASE", "METHOD", "MODEL", "PROGRESS", "GPUS", "AGE"]


@pytest.fixture(autouse=True, scope="module")
def _no_operator() -> None:
    """These tests write statuses by hand: an operator another module started would
    reconcile their jobs and overwrite them."""
    stop_shared_operator()


def _load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _crd_doc() -> dict[str, Any]:
    docs = [d for d in _load_docs(CRD_PATH) if d.get("kind") == "CustomResourceDefinition"]
    assert docs, f"no CustomResourceDefinition in {CRD_PATH}"
    return docs[0]


def _example_jobs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in EXAMPLES:
        for i, doc in enumerate(_load_docs(path)):
            if doc.get("kind") == "FineTuneJob":
                out.append((f"{path.stem}-{i}", doc))
    return out


def _in_namespace(doc: dict[str, Any], namespace: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc.setdefault("metadata", {})["namespace"] = namespace
    return doc


def _cel_message(rule_fragment: str) -> str:
    """The message of the CRD's x-kubernetes-validations rule containing ``rule_fragment``."""

    def walk(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            yield from node.get("x-kubernetes-validations", []) or []
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    for rule in walk(_crd_doc()):
        if rule_fragment in rule.get("rule", ""):
            return str(rule.get("message") or rule["rule"])
    raise AssertionError(f"the CRD has no validation rule containing {rule_fragment!r}")


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> str:
    if not CRD_PATH.is_file():
        pytest.fail(f"{CRD_PATH} is missing")
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_PATH))
    cluster.wait_established(CRD_NAME)
    return CRD_NAME


def test_crd_installs_and_is_established(crd: str, kubectl: Kubectl) -> None:
    obj = json.loads(kubectl("get", "crd", crd, "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
    assert conditions.get("Established") == "True"
    assert conditions.get("NamesAccepted") == "True"
    assert "ftj" in obj["spec"]["names"].get("shortNames", [])
    # kubectl() raises on failure, so check what the short name resolves to instead.
    rows = kubectl("api-resources", "--api-group=kubetune.io", "--no-headers").stdout
    assert ["finetunejobs", "ftj", "kubetune.io/v1alpha1", "true", "FineTuneJob"] in [
        row.split() for row in rows.splitlines()
    ], rows
    listed = json.loads(kubectl("get", "ftj", "-A", "-o", "json").stdout)
    assert isinstance(listed["items"], list)


@pytest.mark.parametrize(("name", "doc"), _example_jobs(), ids=[n for n, _ in _example_jobs()])
def test_example_is_accepted(
    crd: str, kubectl: Kubectl, namespace: str, name: str, doc: dict[str, Any]
) -> None:
    manifest = yaml.safe_dump(_in_namespace(doc, namespace))
    dry = kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)
    assert dry.returncode == 0, f"{name} refused by the API server (dry run): {dry.stderr}"
    kubectl("apply", "-f", "-", input=manifest)
    got = json.loads(
        kubectl("get", "ftj", doc["metadata"]["name"], "-o", "json", namespace=namespace).stdout
    )
    assert got["spec"]["method"] == doc["spec"]["method"]


def test_examples_exist() -> None:
    assert _example_jobs(), "examples/*.yaml holds no FineTuneJob"


def _base_job() -> dict[str, Any]:
    jobs = _example_jobs()
    if not jobs:
        pytest.fail("examples/*.yaml holds no FineTuneJob to derive invalid manifests from")
    # prefer a LoRA example (it exercises the most fields), else the first one
    for _, doc in jobs:
        if doc["spec"].get("method") == "lora":
            return copy.deepcopy(doc)
    return copy.deepcopy(jobs[0][1])


def _mutate_method_sft(doc: dict[str, Any]) -> tuple[str, str]:
    doc["spec"]["method"] = "sft"
    return "spec.method", 'Unsupported value: "sft"'


def _mutate_missing_model(doc: dict[str, Any]) -> tuple[str, str]:
    del doc["spec"]["model"]
    return "spec.model", "Required value"


def _mutate_unknown_field(doc: dict[str, Any]) -> tuple[str, str]:
    doc["spec"]["learningRate"] = 0.1
    return "learningRate", "unknown field"


def _mutate_ppo(doc: dict[str, Any]) -> tuple[str, str]:
    doc["spec"]["method"] = "ppo"  # without rlhf.reward: nothing would pay the policy
    doc["spec"]["dataset"]["format"] = "promptOnly"
    return "spec.rlhf", _cel_message(") || (has(self.rlhf) && has(self.rlhf.reward))")


def _mutate_epochs_and_max_steps(doc: dict[str, Any]) -> tuple[str, str]:
    doc["spec"].setdefault("hyperparameters", {})["epochs"] = 1
    doc["spec"]["hyperparameters"]["maxSteps"] = 100
    return "spec.hyperparameters", _cel_message("has(self.epochs) && has(self.maxSteps)")


def _mutate_bad_name(doc: dict[str, Any]) -> tuple[str, str]:
    doc["metadata"]["name"] = "x" * 254
    return "metadata.name", "must be no more than 253 characters"


def _mutate_output_escape(doc: dict[str, Any]) -> tuple[str, str]:
    doc["spec"]["output"]["uri"] = "pvc://ckpt/../../etc/x"
    return "spec.output.uri", "should match"


def _mutate_shared_memory(doc: dict[str, Any]) -> tuple[str, str]:
    doc["spec"]["resources"].update(memory="8Gi", sharedMemory="9Gi")
    return "spec.resources.sharedMemory", _cel_message("quantity(self.sharedMemory)")


def _mutate_toleration(doc: dict[str, Any]) -> tuple[str, str]:
    doc["spec"]["resources"]["tolerations"] = [
        {"key": "gpu", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5}
    ]
    return "spec.resources.tolerations[0].tolerationSeconds", _cel_message(
        "!has(self.tolerationSeconds)"
    )


INVALID: list[tuple[str, Callable[[dict[str, Any]], tuple[str, str]]]] = [
    ("unknown-method", _mutate_method_sft),
    ("missing-model", _mutate_missing_model),
    ("unknown-field", _mutate_unknown_field),
    ("ppo-without-reward-cel", _mutate_ppo),
    ("epochs-and-maxsteps-cel", _mutate_epochs_and_max_steps),
    ("name-too-long", _mutate_bad_name),
    ("output-escapes-claim", _mutate_output_escape),
    ("shared-memory-above-memory-cel", _mutate_shared_memory),
    ("toleration-seconds-cel", _mutate_toleration),
]


@pytest.mark.parametrize(
    "name", ["llama3.1-8b-sft", "3b-sft", "org.team-a." + "l" * 242], ids=["dotted", "digit", "253"]
)
def test_any_valid_object_name_is_accepted(
    crd: str, kubectl: Kubectl, namespace: str, name: str
) -> None:
    """Pod and Service names are derived by the operator, so the job name is free (#16)."""
    doc = _base_job()
    doc["metadata"]["name"] = name
    manifest = yaml.safe_dump(_in_namespace(doc, namespace))
    proc = kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(("case", "mutate"), INVALID, ids=[c for c, _ in INVALID])
def test_invalid_manifest_is_refused(
    crd: str,
    kubectl: Kubectl,
    namespace: str,
    case: str,
    mutate: Callable[[dict[str, Any]], tuple[str, str]],
) -> None:
    doc = _base_job()
    doc["metadata"]["name"] = f"invalid-{case}"[:40]
    field, message = mutate(doc)
    manifest = yaml.safe_dump(_in_namespace(doc, namespace))
    for extra in (["--dry-run=server"], []):
        proc = kubectl("apply", *extra, "-f", "-", input=manifest, check=False)
        assert proc.returncode != 0, f"{case}: accepted by the API server ({extra})"
        assert field in proc.stderr, proc.stderr
        # the API server may fold long messages; compare with normalised whitespace
        assert " ".join(message.split()) in " ".join(proc.stderr.split()), proc.stderr
    name = doc["metadata"]["name"]
    assert kubectl("get", "ftj", name, namespace=namespace, check=False).returncode != 0


def test_printer_columns(crd: str, kubectl: Kubectl, namespace: str) -> None:
    doc = _in_namespace(_base_job(), namespace)
    name = doc["metadata"]["name"]
    kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    status = {"status": {"phase": "Running", "gpus": 8, "progress": {"summary": "10/300"}}}
    kubectl(
        "patch", "ftj", name, "--subresource=status", "--type=merge", "-p", json.dumps(status),
        namespace=namespace,
    )  # fmt: skip
    out = kubectl("get", "ftj", name, namespace=namespace).stdout.splitlines()
    assert out[0].split() == PRINTER_COLUMNS, out
    row = out[1].split()
    assert row[0] == name
    assert row[1:6] == [
        "Running",
        doc["spec"]["method"],
        doc["spec"]["model"]["uri"],
        "10/300",
        "8",
    ]
    wide = kubectl("get", "ftj", name, "-o", "wide", namespace=namespace).stdout.splitlines()[0]
    assert "ATTEMPTS" in wide.split()


def test_kubectl_explain_shows_descriptions(crd: str, kubectl: Kubectl) -> None:
    spec_desc = _crd_doc()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "spec"
    ]["properties"]["method"]["description"]

    def explain() -> str | None:
        proc = kubectl("explain", "finetunejob.spec", check=False)
        return proc.stdout if proc.returncode == 0 and "FIELDS:" in proc.stdout else None

    # the OpenAPI document of a new CRD is published a moment after it is Established
    out = wait_until(explain, timeout=60, interval=1, what="kubectl explain finetunejob.spec")
    assert "GROUP:      kubetune.io" in out
    assert "KIND:       FineTuneJob" in out
    for field in ("method", "model", "dataset", "output"):
        assert f"  {field}\t" in out or f"  {field} " in out, field
    assert " ".join(spec_desc.split()[:6]) in " ".join(out.split())
    method = kubectl("explain", "finetunejob.spec.method").stdout
    assert "lora" in method
