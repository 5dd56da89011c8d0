"""The API server and ``kubetune validate`` reach the same verdicts.

Every hand-written invalid manifest of the unit tests is sent to the real API server
(server-side dry run, strict field validation): it must be refused there too, naming
the same field. Random manifests from hypothesis must get the same accept/refuse
verdict from both. Transition rules are checked on real updates.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kubetune.api import GROUP, PLURAL, VERSION
from kubetune.api.validation import load_documents, validate_manifest
from kubetune.devcluster.testing import Cluster
from tests.e2e.operator_helpers import stop_shared_operator
from tests.fixtures.manifests import CASES, Mutation, minimal_manifest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> Iterator[client.CustomObjectsApi]:
    # The API server's own verdicts: a shared operator left running by an earlier module
    # would write the jobs' status meanwhile, and a replace built on the object as read
    # would meet a 409 instead of the rule under test.
    stop_shared_operator()
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/finetunejobs.kubetune.io", "--timeout=60s"
    )
    api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield client.CustomObjectsApi(api_client)
    api_client.close()


def _server_verdict(
    api: client.CustomObjectsApi, namespace: str, doc: dict[str, Any]
) -> str | None:
    """None when the server accepts ``doc`` (dry run), else its message."""
    doc = copy.deepcopy(doc)
    doc.setdefault("metadata", {})["namespace"] = namespace
    try:
        api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, doc, dry_run="All", field_validation="Strict"
        )
    except ApiException as exc:
        assert exc.status in (400, 422), exc
        body = json.loads(exc.body) if exc.body else {}
        return str(body.get("message", exc.reason))
    return None


def _server_field(path: str) -> str:
    """Where the server names a field: it omits list indexes on unknown-field errors."""
    return path.split("[")[0] if path else "metadata.name"


@pytest.mark.parametrize(
    ("mutation", "path", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_server_refuses_what_python_refuses(
    api: client.CustomObjectsApi, namespace: str, mutation: Mutation, path: str, fragment: str
) -> None:
    doc = minimal_manifest()
    mutation(doc)
    assert not validate_manifest(doc).ok
    message = _server_verdict(api, namespace, doc)
    assert message is not None, "the API server accepted a manifest kubetune refuses"
    if path.startswith("spec.") or path == "":
        assert _server_field(path).removeprefix("spec.") in message, message


def test_server_accepts_every_example(api: client.CustomObjectsApi, namespace: str) -> None:
    docs = [d for _, d in load_documents(REPO / "examples") if d.get("kind") == "FineTuneJob"]
    assert docs
    for doc in docs:
        assert validate_manifest(doc).ok
        assert _server_verdict(api, namespace, doc) is None


BATCHES = st.fixed_dictionaries(
    {
        "globalBatchSize": st.integers(1, 300),
        "microBatchSize": st.integers(1, 20),
        "warmupRatio": st.sampled_from([0.0, 0.1, 0.6]),
    }
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    method=st.sampled_from(["full", "lora", "qlora", "prefix", "prompt", "adapter", "dpo", "ppo"]),
    fmt=st.sampled_from(["chat", "text", "preference"]),
    nodes=st.integers(0, 3),
    gpus=st.integers(0, 9),
    batches=BATCHES,
    strategy=st.sampled_from([{}, {"strategy": "deepspeed", "zeroStage": 3}, {"zeroStage": 1}]),
    peft=st.sampled_from([None, {"lora": {"r": 8}}, {"prompt": {"init": "text"}}]),
)
def test_random_manifests_get_the_same_verdict(
    api: client.CustomObjectsApi,
    namespace: str,
    method: str,
    fmt: str,
    nodes: int,
    gpus: int,
    batches: dict[str, Any],
    strategy: dict[str, Any],
    peft: dict[str, Any] | None,
) -> None:
    doc = minimal_manifest()
    spec = doc["spec"]
    spec.update(method=method, hyperparameters=batches, distributed=strategy)
    spec["dataset"]["format"] = fmt
    spec["resources"] = {"nodes": nodes, "gpusPerNode": gpus}
    if peft is not None:
        spec["peft"] = peft
    python_ok = validate_manifest(doc).ok
    server_message = _server_verdict(api, namespace, doc)
    assert python_ok == (server_message is None), server_message


def _get(api: client.CustomObjectsApi, namespace: str) -> dict[str, Any]:
    obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "demo")
    assert isinstance(obj, dict)
    return obj


def test_transition_rules_on_real_updates(api: client.CustomObjectsApi, namespace: str) -> None:
    doc = minimal_manifest()
    doc["metadata"]["namespace"] = namespace
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, doc)

    def update(mutate: Mutation) -> str | None:
        current = _get(api, namespace)
        mutate(current)
        try:
            api.replace_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, "demo", current, dry_run="All"
            )
        except ApiException as exc:
            return str(json.loads(exc.body or "{}").get("message", exc.reason))
        return None

    def set_method(d: dict[str, Any]) -> None:
        d["spec"]["method"] = "full"

    def set_gpus(d: dict[str, Any]) -> None:
        d["spec"]["resources"]["gpusPerNode"] = 4

    def suspend(d: dict[str, Any]) -> None:
        d["spec"]["runPolicy"]["suspend"] = True

    refused = update(set_method)
    assert refused is not None and "method cannot change" in refused
    refused = update(set_gpus)
    assert refused is not None and "only while the job is suspended" in refused
    assert update(suspend) is None
    # and Python says the same about each update
    old = _get(api, namespace)
    for mutate, ok in ((set_method, False), (set_gpus, False), (suspend, True)):
        new = copy.deepcopy(old)
        mutate(new)
        assert validate_manifest(new, old=old).ok is ok


IMMUTABLE_UPDATES: list[tuple[str, Mutation]] = [
    ("output", lambda d: d["spec"]["output"].update(uri="pvc://out/elsewhere")),
    ("model", lambda d: d["spec"]["model"].update(uri="pvc://models/other")),
    ("hyperparameters", lambda d: d["spec"]["hyperparameters"].update(seed=7)),
    ("peft", lambda d: d["spec"].update(peft={"lora": {"r": 8}})),
]


def test_immutable_blocks_on_real_updates(api: client.CustomObjectsApi, namespace: str) -> None:
    """output, model, hyperparameters and peft cannot change: server and Python agree (#24)."""
    doc = minimal_manifest()
    doc["metadata"].update(namespace=namespace, name="immutable")
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, doc)
    old = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "immutable")
    for field, mutate in IMMUTABLE_UPDATES:
        new = copy.deepcopy(old)
        mutate(new)
        try:
            api.replace_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, "immutable", new, dry_run="All"
            )
        except ApiException as exc:
            message = str(json.loads(exc.body or "{}").get("message", exc.reason))
        else:
            message = ""
        assert f"{field} cannot change after creation" in message, (field, message)
        python = validate_manifest(new, old=old)
        assert [p.path for p in python.errors] == [f"spec.{field}"], python.errors
