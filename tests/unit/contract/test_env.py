"""The environment names both sides share: one spelling each, none reused."""

from __future__ import annotations

from kubetune.contract import env
from kubetune_operator.settings import ENV_PREFIX


def test_names_are_unique_and_clear_of_the_operator_settings() -> None:
    names = [v for k, v in vars(env).items() if k.endswith("_ENV") and isinstance(v, str)]
    credentials = [key for key, _ in env.S3_CREDENTIAL_ENV]
    assert len(set(names)) == len(names) and len(set(credentials)) == len(credentials)
    assert env.AWS_ENDPOINT_URL_ENV in credentials
    assert not [name for name in names if name.startswith(ENV_PREFIX)]
