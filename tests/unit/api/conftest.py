"""Shared fixtures for the API tests."""

from __future__ import annotations

import copy
from typing import Any

import pytest


def minimal_manifest() -> dict[str, Any]:
    """The smallest valid FineTuneJob."""
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "demo", "namespace": "team-a"},
        "spec": {
            "method": "lora",
            "model": {"uri": "pvc://models/llama-3-8b"},
            "dataset": {"train": "pvc://data/train.jsonl", "format": "chat"},
            "resources": {"nodes": 1, "gpusPerNode": 8},
            "output": {"uri": "pvc://out/demo"},
        },
    }


@pytest.fixture
def manifest() -> dict[str, Any]:
    return copy.deepcopy(minimal_manifest())
