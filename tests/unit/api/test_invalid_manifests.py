"""Each bad manifest is refused with a message that names the offending field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from kubetune.api.validation import validate_manifest

from .conftest import minimal_manifest

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        node = doc
        keys = path.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value

    return mutate


def _delete(path: str) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        node = doc
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]

    return mutate


def _all(*mutations: Mutation) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        for m in mutations:
            m(doc)

    return mutate


# (id, mutation, expected field path, expected message fragment)
CASES: list[tuple[str, Mutation, str, str]] = [
    (
        "wrong-api-version",
        _set("apiVersion", "kubetune.io/v1"),
        "apiVersion",
        "kubetune.io/v1alpha1",
    ),
    ("wrong-kind", _set("kind", "TrainingJob"), "kind", "FineTuneJob"),
    ("unknown-method", _set("spec.method", "sft"), "spec.method", "'full'"),
    (
        "ppo-not-supported",
        _all(_set("spec.method", "ppo"), _delete("spec.resources")),
        "spec.method",
        "not supported in this version",
    ),
    ("missing-model", _delete("spec.model"), "spec.model", "Required value"),
    ("missing-output", _delete("spec.output"), "spec.output", "Required value"),
    ("missing-dataset-format", _delete("spec.dataset.format"), "spec.dataset.format", "Required"),
    (
        "bad-model-scheme",
        _set("spec.model.uri", "http://example/model"),
        "spec.model.uri",
        "not a valid value",
    ),
    (
        "relative-model-path",
        _set("spec.model.uri", "models/llama"),
        "spec.model.uri",
        "not a valid value",
    ),
    ("bad-dataset-format", _set("spec.dataset.format", "csv"), "spec.dataset.format", "'chat'"),
    (
        "hf-output-not-allowed",
        _set("spec.output.uri", "hf://org/name"),
        "spec.output.uri",
        "not a valid value",
    ),
    (
        "eval-and-split",
        _all(
            _set("spec.dataset.eval", "pvc://data/eval.jsonl"), _set("spec.dataset.evalSplit", 0.1)
        ),
        "spec.dataset.evalSplit",
        "not both",
    ),
    (
        "eval-split-too-big",
        _set("spec.dataset.evalSplit", 0.9),
        "spec.dataset.evalSplit",
        "less than or equal to 0.5",
    ),
    (
        "seq-len-too-small",
        _set("spec.dataset.maxSeqLength", 8),
        "spec.dataset.maxSeqLength",
        "greater than or equal to 16",
    ),
    (
        "negative-learning-rate",
        _set("spec.hyperparameters.learningRate", -1e-4),
        "spec.hyperparameters.learningRate",
        "greater than 0",
    ),
    (
        "learning-rate-above-hard-bound",
        _set("spec.hyperparameters.learningRate", 3.0),
        "spec.hyperparameters.learningRate",
        "less than or equal to 1",
    ),
    (
        "epochs-and-max-steps",
        _all(_set("spec.hyperparameters.epochs", 2), _set("spec.hyperparameters.maxSteps", 100)),
        "spec.hyperparameters.maxSteps",
        "not both",
    ),
    (
        "batch-not-divisible",
        _set("spec.hyperparameters.globalBatchSize", 100),
        "spec.hyperparameters.globalBatchSize",
        "not a multiple of microBatchSize x nodes x gpusPerNode = 32",
    ),
    (
        "micro-batch-larger-than-global",
        _all(
            _set("spec.hyperparameters.globalBatchSize", 2),
            _set("spec.hyperparameters.microBatchSize", 4),
        ),
        "spec.hyperparameters.globalBatchSize",
        "at least microBatchSize",
    ),
    (
        "weight-decay-above-1",
        _set("spec.hyperparameters.weightDecay", 1.5),
        "spec.hyperparameters.weightDecay",
        "less than or equal to 1",
    ),
    (
        "unknown-scheduler",
        _set("spec.hyperparameters.scheduler", "polynomial"),
        "spec.hyperparameters.scheduler",
        "'cosine'",
    ),
    (
        "typo-field",
        _set("spec.hyperparameters.learningrate", 1e-4),
        "spec.hyperparameters.learningrate",
        "unknown field",
    ),
    (
        "peft-with-full",
        _all(_set("spec.method", "full"), _set("spec.peft", {"lora": {"r": 8}})),
        "spec.peft",
        "only to method lora, qlora, prefix, prompt or adapter",
    ),
    (
        "lora-settings-with-prefix",
        _all(_set("spec.method", "prefix"), _set("spec.peft", {"lora": {"r": 8}})),
        "spec.peft.lora",
        "only to method lora or qlora",
    ),
    (
        "quantization-with-lora",
        _set("spec.peft", {"quantization": {"bits": 4}}),
        "spec.peft.quantization",
        "only to method qlora",
    ),
    (
        "lora-rank-zero",
        _set("spec.peft", {"lora": {"r": 0}}),
        "spec.peft.lora.r",
        "greater than or equal to 1",
    ),
    (
        "lora-empty-targets",
        _set("spec.peft", {"lora": {"targetModules": []}}),
        "spec.peft.lora.targetModules",
        "at least 1",
    ),
    (
        "prompt-init-text-missing",
        _all(_set("spec.method", "prompt"), _set("spec.peft", {"prompt": {"init": "text"}})),
        "spec.peft.prompt.initText",
        "init text requires initText",
    ),
    (
        "quant-bits-3",
        _all(_set("spec.method", "qlora"), _set("spec.peft", {"quantization": {"bits": 3}})),
        "spec.peft.quantization.bits",
        "4 or 8",
    ),
    (
        "dpo-on-chat-data",
        _set("spec.method", "dpo"),
        "spec.dataset.format",
        "must be preference for methods reward and dpo",
    ),
    (
        "sft-on-preference-data",
        _set("spec.dataset.format", "preference"),
        "spec.dataset.format",
        "must not be preference",
    ),
    (
        "dpo-settings-with-lora",
        _set("spec.rlhf", {"dpo": {"beta": 0.1}}),
        "spec.rlhf",
        "only to method reward, ppo or dpo",
    ),
    (
        "packing-with-preference",
        _all(
            _set("spec.method", "dpo"),
            _set("spec.dataset.format", "preference"),
            _set("spec.dataset.packing", True),
        ),
        "spec.dataset.packing",
        "not available for the preference format",
    ),
    (
        "no-gpus",
        _set("spec.resources.gpusPerNode", 0),
        "spec.resources.gpusPerNode",
        "at least one GPU",
    ),
    (
        "too-many-gpus-per-node",
        _set("spec.resources.gpusPerNode", 32),
        "spec.resources.gpusPerNode",
        "less than or equal to 16",
    ),
    (
        "zero-nodes",
        _set("spec.resources.nodes", 0),
        "spec.resources.nodes",
        "greater than or equal to 1",
    ),
    (
        "bad-memory-quantity",
        _set("spec.resources.memory", "lots"),
        "spec.resources.memory",
        "not a valid value",
    ),
    (
        "bad-node-selector-key",
        _set("spec.resources.nodeSelector", {"bad key!": "x"}),
        "spec.resources.nodeSelector",
        "valid label keys",
    ),
    (
        "bad-toleration-operator",
        _set("spec.resources.tolerations", [{"operator": "In"}]),
        "spec.resources.tolerations[0].operator",
        "'Exists'",
    ),
    (
        "zero-stage-without-deepspeed",
        _set("spec.distributed", {"zeroStage": 3}),
        "spec.distributed.zeroStage",
        "only to strategy deepspeed",
    ),
    (
        "zero-stage-4",
        _set("spec.distributed", {"strategy": "deepspeed", "zeroStage": 4}),
        "spec.distributed.zeroStage",
        "1, 2 or 3",
    ),
    (
        "offload-with-ddp",
        _set("spec.distributed", {"offload": "optimizer"}),
        "spec.distributed.offload",
        "needs strategy deepspeed or fsdp",
    ),
    (
        "param-offload-zero2",
        _set("spec.distributed", {"strategy": "deepspeed", "zeroStage": 2, "offload": "all"}),
        "spec.distributed.offload",
        "zeroStage 3",
    ),
    (
        "checkpoint-interval-too-short",
        _set("spec.checkpoint", {"intervalSeconds": 5}),
        "spec.checkpoint.intervalSeconds",
        "greater than or equal to 60",
    ),
    (
        "keep-last-zero",
        _set("spec.checkpoint", {"keepLast": 0}),
        "spec.checkpoint.keepLast",
        "greater than or equal to 1",
    ),
    (
        "merge-prefix-adapter",
        _all(_set("spec.method", "prefix"), _set("spec.output.mergeAdapter", True)),
        "spec.output.mergeAdapter",
        "only to lora and qlora",
    ),
    (
        "negative-backoff",
        _set("spec.runPolicy", {"backoffLimit": -1}),
        "spec.runPolicy.backoffLimit",
        "greater than or equal to 0",
    ),
    (
        "stall-timeout-too-short",
        _set("spec.runPolicy", {"stallTimeoutSeconds": 10}),
        "spec.runPolicy.stallTimeoutSeconds",
        "greater than or equal to 60",
    ),
    (
        "inline-secret-env",
        _set("spec.env", [{"name": "HF_TOKEN", "value": "hf_abc"}]),
        "spec.env[0].value",
        "never inline",
    ),
    (
        "env-value-and-from",
        _set(
            "spec.env",
            [
                {
                    "name": "MODE",
                    "value": "x",
                    "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
                }
            ],
        ),
        "spec.env[0]",
        "not both",
    ),
    (
        "inline-credentials-field",
        _set("spec.model.credentials", {"accessKey": "AKIA"}),
        "spec.model.credentials",
        "unknown field",
    ),
    (
        "bad-secret-ref-name",
        _set("spec.model.credentialsSecretRef", {"name": "Bad_Name"}),
        "spec.model.credentialsSecretRef.name",
        "not a valid value",
    ),
    ("job-name-uppercase", _set("metadata.name", "MyJob"), "metadata.name", "DNS-1035"),
    ("job-name-too-long", _set("metadata.name", "a" * 41), "metadata.name", "at most 40"),
    ("job-name-starts-with-digit", _set("metadata.name", "1job"), "metadata.name", "DNS-1035"),
    ("dtype-int8", _set("spec.model.dtype", "int8"), "spec.model.dtype", "'bfloat16'"),
    (
        "precision-tf32",
        _set("spec.hyperparameters.precision", "tf32"),
        "spec.hyperparameters.precision",
        "'bf16'",
    ),
]


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize(
    ("mutation", "path", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_invalid_manifest_is_refused_naming_the_field(
    mutation: Mutation, path: str, fragment: str
) -> None:
    doc = copy.deepcopy(minimal_manifest())
    mutation(doc)
    report = validate_manifest(doc)
    assert not report.ok
    messages = [str(p) for p in report.errors]
    matching = [p for p in report.errors if p.path == path]
    assert matching, f"no error at {path}; got {messages}"
    assert any(fragment in p.message for p in matching), messages


def test_every_problem_is_reported_not_just_the_first() -> None:
    doc = copy.deepcopy(minimal_manifest())
    doc["spec"]["hyperparameters"] = {"learningRate": 5, "warmupRatio": 0.9}
    doc["spec"]["resources"]["nodes"] = 0
    paths = {p.path for p in validate_manifest(doc).errors}
    assert {
        "spec.hyperparameters.learningRate",
        "spec.hyperparameters.warmupRatio",
        "spec.resources.nodes",
    } <= paths


def test_not_a_mapping() -> None:
    report = validate_manifest(["not", "a", "manifest"])
    assert not report.ok
    assert "mapping" in report.errors[0].message
