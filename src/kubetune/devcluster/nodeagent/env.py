"""A container's environment as the kubelet builds it (pure functions).

``env`` entries in order (``value`` with ``$(VAR)`` expansion, ``valueFrom`` secretKeyRef /
configMapKeyRef / fieldRef / resourceFieldRef), after ``envFrom``. ConfigMaps and Secrets are
fetched beforehand (:func:`referenced_objects` names them) and passed in as plain mappings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

JSON = dict[str, Any]
#: name -> key -> value (ConfigMap data and binaryData, Secret data decoded)
Objects = Mapping[str, Mapping[str, bytes]]

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)$")
_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


class ConfigError(Exception):
    """The pod cannot start yet (``CreateContainerConfigError``): a referenced ConfigMap,
    Secret or key is missing and not optional."""


def parse_quantity(text: str) -> Decimal:
    """A Kubernetes quantity (``500m``, ``2Gi``, ``1e3``) as a number."""
    match = _QUANTITY.match(str(text).strip())
    if not match:
        raise ValueError(f"not a quantity: {text!r}")
    number, suffix = Decimal(match[1]), match[2]
    return number * (_BINARY[suffix] if suffix in _BINARY else _DECIMAL[suffix])


def expand(text: str, env: Mapping[str, str]) -> str:
    """``$(VAR)`` -> its value when defined (else left as is); ``$$`` -> ``$``."""

    def sub(m: re.Match[str]) -> str:
        if m[0] == "$$":
            return "$"
        return env.get(m[1], m[0])

    return _REF.sub(sub, text)


def referenced_objects(pod: JSON) -> tuple[set[str], set[str]]:
    """Names of the ConfigMaps and Secrets the pod's env, envFrom and volumes refer to."""
    maps: set[str] = set()
    secrets: set[str] = set()
    spec = pod.get("spec") or {}
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for src in c.get("envFrom") or []:
            if "configMapRef" in src:
                maps.add(src["configMapRef"]["name"])
            if "secretRef" in src:
                secrets.add(src["secretRef"]["name"])
        for e in c.get("env") or []:
            ref = e.get("valueFrom") or {}
            if "configMapKeyRef" in ref:
                maps.add(ref["configMapKeyRef"]["name"])
            if "secretKeyRef" in ref:
                secrets.add(ref["secretKeyRef"]["name"])
    for vol in spec.get("volumes") or []:
        sources = [vol, *((vol.get("projected") or {}).get("sources") or [])]
        for src in sources:
            if "configMap" in src:
                maps.add(src["configMap"]["name"])
            if "secret" in src:
                secrets.add(src["secret"].get("secretName") or src["secret"].get("name", ""))
    return maps, secrets


def field_value(pod: JSON, path: str) -> str:
    """A ``fieldRef.fieldPath`` of the pod (the Downward API)."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str((meta.get(m[1]) or {}).get(m[2], ""))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
    }
    if path not in simple:
        raise ConfigError(f"unsupported fieldRef {path!r}")
    return str(simple[path] or "")


def resource_value(container: JSON, ref: JSON, node_allocatable: Mapping[str, str]) -> str:
    """A ``resourceFieldRef``: the container's limit (else the node's allocatable) or
    request, divided by ``divisor`` and rounded up, as the kubelet does."""
    kind, _, name = str(ref["resource"]).partition(".")
    res = (container.get("resources") or {}).get(kind) or {}
    raw = res.get(name) or (node_allocatable.get(name, "0") if kind == "limits" else "0")
    divisor = parse_quantity(str(ref.get("divisor") or "1"))
    return str(math.ceil(parse_quantity(str(raw)) / divisor))


def _lookup(objects: Objects, kind: str, ref: JSON) -> str | None:
    name, key, optional = ref.get("name", ""), ref["key"], bool(ref.get("optional"))
    obj = objects.get(name)
    if obj is None or key not in obj:
        if optional:
            return None
        what = f"{kind} {name!r}" if obj is None else f"key {key!r} in {kind} {name!r}"
        raise ConfigError(f"{what} not found")
    return obj[key].decode(errors="replace")


def container_env(
    pod: JSON,
    container: JSON,
    config_maps: Objects,
    secrets: Objects,
    node_allocatable: Mapping[str, str] | None = None,
    service_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of ``container`` (without the image's own variables). ``service_env``
    (the ``kubernetes`` Service's variables) comes first, as the kubelet adds it: ``$(VAR)``
    may refer to it and the pod's own ``env``/``envFrom`` override it."""
    env: dict[str, str] = dict(service_env or {})
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        for kind, objects in (("configMapRef", config_maps), ("secretRef", secrets)):
            ref = src.get(kind)
            if ref is None:
                continue
            obj = objects.get(ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f"{kind[:-3]} {ref['name']!r} not found")
            env.update({prefix + k: v.decode(errors="replace") for k, v in obj.items()})
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand(str(item.get("value", "")), env)
            continue
        ref = item["valueFrom"]
        value: str | None
        if "secretKeyRef" in ref:
            value = _lookup(secrets, "Secret", ref["secretKeyRef"])
        elif "configMapKeyRef" in ref:
            value = _lookup(config_maps, "ConfigMap", ref["configMapKeyRef"])
        elif "fieldRef" in ref:
            value = field_value(pod, ref["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in ref:
            value = resource_value(container, ref["resourceFieldRef"], node_allocatable or {})
        else:
            raise ConfigError(f"env {name!r}: unsupported valueFrom {sorted(ref)}")
        if value is not None:
            env[name] = value
    return env


def command_line(container: JSON, env: Mapping[str, str]) -> list[str]:
    """``command`` + ``args`` with ``$(VAR)`` expanded (no image entrypoint here: a
    container without a command cannot run on the agent)."""
    argv = [
        expand(str(a), env)
        for a in [*(container.get("command") or []), *(container.get("args") or [])]
    ]
    if not argv:
        raise ConfigError(f"container {container.get('name')!r} has no command")
    return argv
