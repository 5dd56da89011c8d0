"""The FineTunePipeline API: the example validates, each stage builds into the FineTuneJob
the operator creates, and every kind of mistake gets a message naming the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api import pipeline as api
from kubetune.api.crd import pipeline_definition, render_crds
from kubetune.api.pipeline_validation import validate_pipeline
from kubetune.api.validation import validate_manifest

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "pipelines" / "sft-rm-grpo.yaml"


@pytest.fixture
def doc() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))


def errors(doc: dict[str, Any]) -> list[str]:
    return [str(p) for p in validate_pipeline(doc)[1]]


def test_example_validates_and_stages_wire_outputs(doc: dict[str, Any]) -> None:
    pipeline, problems = validate_pipeline(doc)
    assert problems == [] and pipeline is not None
    outputs = api.planned_outputs(pipeline.spec)
    assert outputs == {
        "sft": "pvc://checkpoints/sft-rm-grpo/sft",
        "rm": "pvc://checkpoints/sft-rm-grpo/rm",
        "grpo": "pvc://checkpoints/sft-rm-grpo/grpo",
    }
    sft, rm, grpo = pipeline.spec.stages
    first = api.stage_job_spec(pipeline.spec, sft, outputs)
    assert first["model"]["uri"] == "pvc://models/kubetune-tiny-chat"  # from defaults
    assert first["resources"]["gpusPerNode"] == 2  # defaults reach every stage
    assert first["hyperparameters"] == {  # objects merge key by key, the stage wins
        "maxSteps": 4,
        "globalBatchSize": 8,
        "microBatchSize": 2,
        "warmupRatio": 0.0,
        "scheduler": "constant",
        "learningRate": 1.0e-3,
    }
    last = api.stage_job_spec(pipeline.spec, grpo, outputs)
    assert last["model"]["uri"] == "pvc://checkpoints/sft-rm-grpo/sft"
    assert last["rlhf"]["reward"]["model"] == "pvc://checkpoints/sft-rm-grpo/rm"
    assert last["output"]["uri"] == "pvc://checkpoints/sft-rm-grpo/grpo"
    assert last["hyperparameters"]["maxSteps"] == 3
    assert api.stage_job_spec(pipeline.spec, rm, outputs)["model"]["uri"] == outputs["sft"]


def test_validate_manifest_dispatches_pipelines(doc: dict[str, Any]) -> None:
    assert validate_manifest(doc).ok
    doc["spec"]["stages"][1]["name"] = "sft"
    assert "spec.stages: stage names must be unique" in [
        str(p) for p in validate_manifest(doc).errors
    ]


def test_input_naming_a_later_stage_is_refused_with_the_stage_names(
    doc: dict[str, Any],
) -> None:
    doc["spec"]["stages"][1]["inputs"]["model"] = "grpo"
    assert errors(doc) == [
        "spec.stages[1].inputs.model: stage 'rm' takes model from 'grpo', which is not an "
        "earlier stage (inputs name only stages listed before)"
    ]


def test_input_naming_no_stage_is_refused_by_cel(doc: dict[str, Any]) -> None:
    doc["spec"]["stages"][2]["inputs"]["rewardModel"] = "nope"
    assert errors(doc) == [
        "spec.stages: inputs.rewardModel must name another (earlier) stage of this pipeline"
    ]


def test_input_and_its_field_together_are_refused(doc: dict[str, Any]) -> None:
    doc["spec"]["stages"][2]["spec"]["rlhf"]["reward"] = {"model": "pvc://models/rm"}
    assert errors(doc) == [
        "spec.stages: a stage with inputs.rewardModel must not set spec.rlhf.reward.model too "
        "(the input sets it to the upstream stage's output)"
    ]


def test_no_stages_and_missing_method_and_output(doc: dict[str, Any]) -> None:
    empty = copy.deepcopy(doc)
    empty["spec"]["stages"] = []
    assert any(e.startswith("spec.stages: ") and "at least 1 item" in e for e in errors(empty))
    no_method = copy.deepcopy(doc)
    del no_method["spec"]["stages"][0]["spec"]["method"]
    assert errors(no_method) == ["spec.stages[0].spec.method: Required value"]
    no_output = copy.deepcopy(doc)
    del no_output["spec"]["output"]
    assert errors(no_output) == [
        "spec.output: set output.uri (each stage then writes to <output.uri>/<stage name>) "
        "or spec.output.uri in every stage"
    ]


def test_partial_specs_are_typed_like_profiles(doc: dict[str, Any]) -> None:
    doc["spec"]["stages"][0]["spec"]["hyperparameters"]["learningRate"] = "fast"
    doc["spec"]["defaults"]["method"] = "full"  # a stage names its method, defaults cannot
    doc["spec"]["defaults"]["resources"]["gpusPerNode"] = 99
    assert sorted(errors(doc)) == [
        "spec.defaults.method: unknown field",
        "spec.defaults.resources.gpusPerNode: 99 is above the maximum 16",
        "spec.stages[0].spec.hyperparameters.learningRate: expected number, got str",
    ]


def test_stage_invalid_as_a_job_names_the_stage(doc: dict[str, Any]) -> None:
    del doc["spec"]["stages"][2]["inputs"]["rewardModel"]
    assert errors(doc) == [
        "spec.stages[2].spec.rlhf: methods ppo, grpo and rloo need rlhf.reward (a reward "
        "model or a verifiable check) (stage 'grpo' with the defaults and inputs applied)"
    ]


def test_crd_names_schema_and_shipped_files() -> None:
    crd = pipeline_definition()
    names = crd["spec"]["names"]
    assert (crd["spec"]["group"], names["kind"], names["shortNames"]) == (
        "kubetune.io",
        "FineTunePipeline",
        ["ftp"],
    )
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["stages"]["minItems"] == 1
    stage = spec["properties"]["stages"]["items"]
    assert stage["required"] == ["name", "spec"]
    assert stage["properties"]["spec"]["required"] == ["method"]
    assert "method" not in spec["properties"]["defaults"]["properties"]
    rules = [r["message"] for r in spec["x-kubernetes-validations"]]
    assert "stage names must be unique" in rules
    text = render_crds()["kubetune.io_finetunepipelines.yaml"]
    for folder in ("crds", "charts/kubetune/crds"):
        assert (REPO / folder / "kubetune.io_finetunepipelines.yaml").read_text() == text
