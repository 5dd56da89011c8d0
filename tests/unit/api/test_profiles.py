"""Team defaults: which profiles a job gets, in which order, and how they merge."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubetune.api.crd import (
    profile_definition,
    profile_fragment_schema,
    render_crd_yaml,
    render_crds,
)
from kubetune.api.intent import LAST_APPLIED, authored_spec
from kubetune.api.profiles import (
    Profile,
    ProfileNotFoundError,
    ProfileSet,
    apply_profiles,
    check_fragment,
    deep_merge,
    select_layers,
)
from kubetune.api.validation import validate_manifest
from tests.fixtures.manifests import minimal_manifest


def cluster_profile(name: str, selector: Any = None, **spec: Any) -> Profile:
    body: dict[str, Any] = {"spec": dict(spec)}
    if selector is not None:
        body["spec"]["namespaceSelector"] = selector
    body.update(kind="ClusterFineTuneProfile", metadata={"name": name, "resourceVersion": "7"})
    return Profile.from_body(body)


def ns_profile(name: str, namespace: str = "team-a", **spec: Any) -> Profile:
    return Profile.from_body(
        {
            "kind": "FineTuneProfile",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


def test_layers_are_ordered_as_documented() -> None:
    profiles = ProfileSet(
        cluster=(
            cluster_profile(
                "b-pool", {}, defaults={"image": "b"}, methods={"lora": {"image": "b-lora"}}
            ),
            cluster_profile(
                "a-pool", {}, defaults={"image": "a"}, methods={"lora": {"image": "a-lora"}}
            ),
            cluster_profile("preset", None, defaults={"image": "preset"}),
            cluster_profile(
                "other-team", {"matchLabels": {"team": "other"}}, defaults={"image": "x"}
            ),
        ),
        namespaced=(
            ns_profile("default", defaults={"image": "ns"}, methods={"lora": {"image": "ns-l"}}),
            ns_profile("elsewhere", namespace="team-b", defaults={"image": "nope"}),
        ),
        namespace_labels={"team": "a"},
    )
    layers = select_layers("team-a", "lora", "preset", profiles)
    assert [layer.source for layer in layers] == [
        "ClusterFineTuneProfile/a-pool",
        "ClusterFineTuneProfile/b-pool",
        "ClusterFineTuneProfile/a-pool (methods.lora)",
        "ClusterFineTuneProfile/b-pool (methods.lora)",
        "FineTuneProfile/default",
        "FineTuneProfile/default (methods.lora)",
        "ClusterFineTuneProfile/preset",
    ]
    # A method overlay applies only to its method.
    full = select_layers("team-a", "full", None, profiles)
    assert all("methods" not in layer.section for layer in full)


def test_named_profile_prefers_the_namespace_and_missing_is_an_error() -> None:
    profiles = ProfileSet(
        cluster=(cluster_profile("fast", None, defaults={"image": "cluster"}),),
        namespaced=(ns_profile("fast", defaults={"image": "namespaced"}),),
    )
    (layer,) = select_layers("team-a", "lora", "fast", profiles)
    assert (layer.kind, layer.fragment) == ("FineTuneProfile", {"image": "namespaced"})
    with pytest.raises(ProfileNotFoundError, match="no FineTuneProfile team-a/slow"):
        select_layers("team-a", "lora", "slow", profiles)


def test_selector_matches_namespace_name_label_and_absent_selector_is_a_preset() -> None:
    by_name = cluster_profile(
        "by-name",
        {
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a"]}
            ]
        },
        defaults={"image": "n"},
    )
    preset = cluster_profile("preset", None, defaults={"image": "p"})
    profiles = ProfileSet(cluster=(by_name, preset))
    assert [x.name for x in select_layers("team-a", "lora", None, profiles)] == ["by-name"]
    assert select_layers("team-b", "lora", None, profiles) == []


def test_merge_objects_deeply_lists_and_scalars_replace() -> None:
    job = minimal_manifest()
    job["spec"]["resources"] = {"nodes": 2}
    job["spec"]["hyperparameters"] = {"epochs": 1}
    team = cluster_profile(
        "team",
        {},
        defaults={
            "resources": {
                "gpusPerNode": 8,
                "nodes": 4,
                "tolerations": [{"key": "gpu", "operator": "Exists"}],
            },
            "image": "team:1",
        },
    )
    mine = ns_profile(
        "default", defaults={"resources": {"tolerations": [{"key": "mine", "operator": "Exists"}]}}
    )
    layers = select_layers("team-a", "lora", None, ProfileSet((team,), (mine,)))
    merged, sources = apply_profiles(job, layers)
    res = merged["spec"]["resources"]
    assert res == {
        "nodes": 2,  # the job wins
        "gpusPerNode": 8,  # objects merge: the profile's sibling survives
        "tolerations": [{"key": "mine", "operator": "Exists"}],  # lists replace
    }
    assert sources["resources.nodes"] == "FineTuneJob"
    assert sources["resources.gpusPerNode"] == "ClusterFineTuneProfile/team"
    assert sources["resources.tolerations"] == "FineTuneProfile/default"
    assert sources["image"] == "ClusterFineTuneProfile/team"
    assert sources["hyperparameters.epochs"] == "FineTuneJob"
    assert job["spec"]["resources"] == {"nodes": 2}, "inputs are not changed"
    assert validate_manifest(merged).ok
    assert deep_merge({"a": {"b": 1}}, {"a": None}) == {"a": {"b": 1}}, "null sets nothing"


def test_cross_field_rules_are_checked_on_the_merged_spec() -> None:
    job = minimal_manifest()
    del job["spec"]["resources"]
    # 64 (default) is not a multiple of micro 4 x 1 node x 3 GPUs: only the merge shows it.
    team = cluster_profile("team", {}, defaults={"resources": {"gpusPerNode": 3}})
    assert validate_manifest(job).ok
    merged, _ = apply_profiles(job, select_layers("team-a", "lora", None, ProfileSet((team,))))
    report = validate_manifest(merged)
    assert not report.ok
    assert "globalBatchSize" in str(report.errors)


# -- the partial schema -------------------------------------------------------------------------
def _walk_objects(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for key, sub in (node.get("properties") or {}).items():
        out += _walk_objects(sub, f"{path}.{key}")
    return out


def test_partial_schema_has_no_required_default_or_cel_along_objects() -> None:
    schema = profile_fragment_schema()
    for path, node in _walk_objects(schema):
        assert "required" not in node, path
        assert "default" not in node, path
        assert "x-kubernetes-validations" not in node, path
    assert "method" not in schema["properties"] and "profile" not in schema["properties"]
    # Types and enums stay.
    strategy = schema["properties"]["distributed"]["properties"]["strategy"]
    assert strategy["enum"] == ["ddp", "fsdp", "deepspeed"]
    # List items are whole items: their required keys stay.
    toleration = schema["properties"]["resources"]["properties"]["tolerations"]["items"]
    assert "required" in toleration or "properties" in toleration


def test_partial_fragment_checks() -> None:
    schema = profile_fragment_schema()
    assert check_fragment(schema, {}) == []
    assert check_fragment(schema, {"model": {"dtype": "bfloat16"}}) == [], "model.uri may be absent"
    assert check_fragment(schema, {"resources": {"gpusPerNode": 8}}) == []
    bad = check_fragment(schema, {"distributed": {"strategy": "horovod"}})
    assert bad and "unsupported value 'horovod'" in bad[0]
    assert check_fragment(schema, {"resources": {"gpusPerNode": 99}})
    assert check_fragment(schema, {"method": "lora"}) == ["method: unknown field"]


def test_profile_crds_are_generated_next_to_the_job_crd() -> None:
    files = render_crds()
    assert files["kubetune.io_finetunejobs.yaml"] == render_crd_yaml()
    assert set(files) == {
        "kubetune.io_finetunejobs.yaml",
        "kubetune.io_finetuneprofiles.yaml",
        "kubetune.io_clusterfinetuneprofiles.yaml",
        "kubetune.io_modelrollouts.yaml",
        "kubetune.io_finetunepipelines.yaml",
    }
    namespaced, cluster = profile_definition(False), profile_definition(True)
    assert namespaced["spec"]["scope"] == "Namespaced" and cluster["spec"]["scope"] == "Cluster"
    assert namespaced["spec"]["names"]["shortNames"] == ["ftprofile"]
    assert cluster["spec"]["names"]["shortNames"] == ["cftprofile"]
    spec = cluster["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "namespaceSelector" in spec["properties"]
    assert spec["properties"]["defaults"]["properties"]["resources"]["type"] == "object"


# -- what the author wrote ------------------------------------------------------------------------
def _stored(spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    doc = minimal_manifest()
    doc["spec"] = spec
    doc["metadata"].update(resourceVersion="5", **meta)
    return doc


def test_server_defaults_are_not_the_authors_values() -> None:
    spec = minimal_manifest()["spec"]
    stored = {
        **spec,
        "resources": {"nodes": 1, "gpusPerNode": 1, "cpu": "8", "tolerations": [], "memory": "1Gi"},
        "runPolicy": {"backoffLimit": 3, "suspend": False},
    }
    own = authored_spec(_stored(stored))
    assert own["resources"] == {"memory": "1Gi"}, "only the non-default value is the author's"
    assert "runPolicy" not in own
    assert own["model"] == spec["model"]
    # kubectl apply's annotation says the author wrote gpusPerNode: 1 (the default) too.
    applied = json.dumps({"spec": {"resources": {"gpusPerNode": 1}}})
    own = authored_spec(_stored(stored, annotations={LAST_APPLIED: applied}))
    assert own["resources"] == {"gpusPerNode": 1, "memory": "1Gi"}
    # Server-side apply: the Apply entry of managedFields says the same.
    fields: dict[str, Any] = {"f:spec": {"f:runPolicy": {"f:backoffLimit": {}}}}
    managed = [{"manager": "kubectl", "operation": "Apply", "fieldsV1": fields}]
    assert authored_spec(_stored(stored, managedFields=managed))["runPolicy"] == {"backoffLimit": 3}
    # A manifest from a file (no resourceVersion) is all the author's.
    assert authored_spec({"spec": stored}) == stored


def test_spec_profile_cannot_change_after_creation() -> None:
    old = minimal_manifest()
    new = json.loads(json.dumps(old))
    new["spec"]["profile"] = "big-gpus"
    report = validate_manifest(new, old=old)
    assert not report.ok and "spec.profile" in str(report.errors[0])
    assert validate_manifest(new, old=new).ok
