"""The node agent's container environment: env, valueFrom, envFrom, $(VAR) expansion."""

from __future__ import annotations

from decimal import Decimal

import pytest

from kubetune.devcluster.nodeagent.env import (
    ConfigError,
    command_line,
    container_env,
    expand,
    parse_quantity,
    referenced_objects,
)


def pod(container: dict, **spec: object) -> dict:
    return {
        "metadata": {
            "name": "job-a1-0",
            "namespace": "team",
            "uid": "u-1",
            "labels": {"rank": "0"},
        },
        "spec": {"nodeName": "kubetune-real-0", "containers": [container], **spec},
        "status": {"podIP": "10.250.0.7", "hostIP": "10.250.0.1"},
    }


def test_values_secrets_config_maps_fields_and_resources() -> None:
    c = {
        "name": "trainer",
        "resources": {"limits": {"cpu": "1500m", "memory": "2Gi"}},
        "env": [
            {"name": "HOME", "value": "/home/kubetune"},
            {"name": "CACHE", "value": "$(HOME)/.cache and $$(HOME) and $(UNSET)"},
            {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "id"}}},
            {
                "name": "TOKEN",
                "valueFrom": {"secretKeyRef": {"name": "s3", "key": "tok", "optional": True}},
            },
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "mode"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "RANK", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['rank']"}}},
            {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {
                "name": "MEM_MI",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
        ],
    }
    env = container_env(pod(c), c, {"cm": {"mode": b"fast"}}, {"s3": {"id": b"AKIA"}})
    assert env == {
        "HOME": "/home/kubetune",
        "CACHE": "/home/kubetune/.cache and $(HOME) and $(UNSET)",
        "KEY": "AKIA",
        "MODE": "fast",
        "POD": "job-a1-0",
        "NS": "team",
        "IP": "10.250.0.7",
        "NODE": "kubetune-real-0",
        "RANK": "0",
        "CPUS": "2",  # rounded up, as the kubelet does
        "MEM_MI": "2048",
    }


def test_env_from_with_prefix_and_later_env_wins() -> None:
    c = {
        "name": "c",
        "envFrom": [
            {"configMapRef": {"name": "cm"}, "prefix": "APP_"},
            {"secretRef": {"name": "gone", "optional": True}},
        ],
        "env": [{"name": "APP_a", "value": "override"}],
    }
    env = container_env(pod(c), c, {"cm": {"a": b"1", "b": b"2"}}, {})
    assert env == {"APP_a": "override", "APP_b": "2"}


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ({"secretKeyRef": {"name": "missing", "key": "k"}}, "Secret 'missing' not found"),
        ({"secretKeyRef": {"name": "s3", "key": "nokey"}}, "key 'nokey' in Secret 's3'"),
        ({"configMapKeyRef": {"name": "nocm", "key": "k"}}, "ConfigMap 'nocm' not found"),
    ],
)
def test_missing_required_reference_is_a_config_error(ref: dict, message: str) -> None:
    c = {"name": "c", "env": [{"name": "X", "valueFrom": ref}]}
    with pytest.raises(ConfigError, match=message):
        container_env(pod(c), c, {}, {"s3": {"id": b"x"}})


def test_referenced_objects_cover_env_env_from_and_volumes() -> None:
    c = {
        "name": "c",
        "envFrom": [{"configMapRef": {"name": "a"}}],
        "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
    }
    p = pod(
        c,
        volumes=[
            {"name": "v", "configMap": {"name": "cfg"}},
            {"name": "w", "secret": {"secretName": "tls"}},
            {"name": "p", "projected": {"sources": [{"configMap": {"name": "ca"}}]}},
        ],
    )
    assert referenced_objects(p) == ({"a", "cfg", "ca"}, {"s", "tls"})


def test_command_line_expands_and_needs_a_command() -> None:
    c = {"name": "c", "command": ["python", "-m", "x"], "args": ["--port=$(PORT)"]}
    assert command_line(c, {"PORT": "9400"}) == ["python", "-m", "x", "--port=9400"]
    with pytest.raises(ConfigError, match="no command"):
        command_line({"name": "c"}, {})


def test_quantities() -> None:
    assert parse_quantity("500m") == Decimal("0.5")
    assert parse_quantity("2Gi") == 2 * 2**30
    assert parse_quantity("1e3") == 1000
    assert expand("$(A)$(B)", {"A": "1"}) == "1$(B)"
