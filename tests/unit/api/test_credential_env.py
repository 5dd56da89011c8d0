"""Inline env values whose names look like credentials are refused (issue 9, finding 7):
by the CRD's CEL rule, which ``validate_manifest`` evaluates as the API server would."""

from __future__ import annotations

import re

import pytest

from kubetune.api.common import SECRET_NAME_REGEX
from kubetune.api.validation import validate_manifest
from tests.fixtures.manifests import minimal_manifest

CREDENTIAL_NAMES = [
    # the ones the review found let through
    "DB_PASS",
    "MYSQL_PWD",
    "OPENAI_KEY",
    "HF_AUTH",
    "SIGNING_KEY",
    "SSH_KEY",
    "BEARER",
    "DATABASE_URL",
    # and their relatives
    "PGPASSWORD",
    "REDIS_PASS",
    "GITLAB_PAT",
    "SENTRY_DSN",
    "KEY",
    "AUTH_HEADER",
    "db_url",
    "MONGO_CONNECTION_STRING",
    "GPG_PASSPHRASE",
    # still refused, as before
    "HF_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "WANDB_API_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS",
]
ORDINARY_NAMES = [
    "WANDB_MODE",
    "HF_HOME",
    "NCCL_DEBUG",
    "LOG_LEVEL",
    "TOKENIZERS_PARALLELISM",
    "KEYBOARD_LAYOUT",
    "AUTHOR",
    "MONKEY_PATCH",
    "PASSTHROUGH_MODE",
    "DATABASE_NAME",
    "PATH_PREFIX",
]


def problems(name: str, value: str = "x") -> list[str]:
    doc = minimal_manifest()
    doc["spec"]["env"] = [{"name": name, "value": value}]
    return [str(p) for p in validate_manifest(doc).errors]


@pytest.mark.parametrize("name", CREDENTIAL_NAMES)
def test_credential_looking_names_need_a_secret_ref(name: str) -> None:
    found = problems(name)
    assert any("looks like a credential" in p for p in found), found
    doc = minimal_manifest()
    doc["spec"]["env"] = [{"name": name, "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    assert validate_manifest(doc).errors == [], "by reference it is fine"


@pytest.mark.parametrize("name", ORDINARY_NAMES)
def test_ordinary_names_may_have_values(name: str) -> None:
    assert problems(name) == []


def test_the_regex_is_re2_safe() -> None:
    """Embedded in a single-quoted CEL string and run by RE2: no backslashes, no quotes, no
    look-around."""
    assert "\\" not in SECRET_NAME_REGEX and "'" not in SECRET_NAME_REGEX
    assert "(?=" not in SECRET_NAME_REGEX and "(?!" not in SECRET_NAME_REGEX
    re.compile(SECRET_NAME_REGEX)
