"""spec.env never overrides what the operator or torchrun sets (issue 12, section 2): the
CRD rule (from the contract's name list) refuses it, and ``validate_manifest`` -- what the
operator and ``kubetune validate`` run -- reaches the same verdict."""

from __future__ import annotations

import json

import pytest
import yaml

from kubetune.api.crd import render_crd_yaml
from kubetune.api.validation import validate_manifest
from kubetune.contract.env import CONFIG_ENV, RESERVED_ENV_NAMES, reserved_env_name


def job(*names: str) -> dict[str, object]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "x", "namespace": "team"},
        "spec": {
            "method": "lora",
            "model": {"uri": "pvc://models/m"},
            "dataset": {"train": "pvc://data/t.jsonl", "format": "chat"},
            "output": {"uri": "pvc://ckpt/x"},
            "env": [{"name": n, "value": "1"} for n in names],
        },
    }


@pytest.mark.parametrize(
    "name", [CONFIG_ENV, "KUBETUNE_ANYTHING", "PET_NNODES", "TORCHELASTIC_RUN_ID", "MASTER_ADDR"]
)
def test_reserved_names_are_refused(name: str) -> None:
    assert reserved_env_name(name)
    errors = [str(e) for e in validate_manifest(job("OK_VAR", name)).errors]
    assert len(errors) == 1, errors
    assert errors[0].startswith("spec.env[1].name: ")
    assert f"'{name}' is set by the operator or torchrun" in errors[0]


def test_ordinary_names_pass() -> None:
    assert validate_manifest(job("OMP_NUM_THREADS", "WANDB_MODE", "MY_KUBETUNE")).errors == []


def test_the_crd_rule_lists_the_contract_names() -> None:
    crd = json.dumps(yaml.safe_load(render_crd_yaml()))  # YAML folds long rules
    for name in RESERVED_ENV_NAMES:
        assert f"'{name}'" in crd
    assert "self.name.startsWith('PET_')" in crd
