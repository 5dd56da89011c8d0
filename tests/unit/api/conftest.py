"""Shared fixtures for the API tests."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.fixtures.manifests import minimal_manifest


@pytest.fixture
def manifest() -> dict[str, Any]:
    return copy.deepcopy(minimal_manifest())
