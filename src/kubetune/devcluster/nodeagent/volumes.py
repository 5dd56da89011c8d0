"""A pod's volumes on the host, and the container's mounts of them.

:func:`plan_volumes` is pure: it decides what each volume becomes (a directory with files for
ConfigMap / Secret / downwardAPI / projected volumes, an emptyDir directory or tmpfs, the shared
host directory ``<pvc root>/<claimName>`` for a PersistentVolumeClaim, a hostPath as is);
:func:`materialize` writes it. :func:`plan_mounts` maps ``volumeMounts`` onto those.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from kubetune.devcluster.nodeagent.env import (
    ConfigError,
    Objects,
    field_value,
    parse_quantity,
    resource_value,
)

JSON = dict[str, Any]
#: (audience, expirationSeconds) -> a ServiceAccount token for the pod (TokenRequest)
TokenSource = Callable[[str | None, int], str]
DEFAULT_MODE = 0o644
EMPTY_DIR_MODE = 0o777


@dataclass(frozen=True)
class Volume:
    """What one pod volume is on the host."""

    name: str
    #: ``files`` (written by the agent, read-only), ``dir`` (emptyDir), ``tmpfs``
    #: (emptyDir medium Memory: a tmpfs inside the sandbox), ``host`` (PVC, hostPath)
    kind: str
    path: Path | None = None
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    read_only: bool = False
    size_bytes: int | None = None


@dataclass(frozen=True)
class Mount:
    """One bind (or tmpfs, ``source`` None) at ``target`` inside the sandbox."""

    target: str
    source: Path | None
    read_only: bool
    size_bytes: int | None = None


def _safe_relative(path: str) -> str:
    rel = PurePosixPath(path)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ConfigError(f"invalid volume item path {path!r}")
    return str(rel)


def _key_files(
    kind: str, name: str, src: JSON, objects: Objects, default_mode: int
) -> dict[str, tuple[bytes, int]]:
    """The files of a ConfigMap or Secret source: every key, or only ``items``."""
    optional = bool(src.get("optional"))
    obj = objects.get(name)
    if obj is None:
        if optional:
            return {}
        raise ConfigError(f"{kind} {name!r} not found")
    items = src.get("items")
    if items is None:
        return {key: (value, default_mode) for key, value in obj.items()}
    out: dict[str, tuple[bytes, int]] = {}
    for item in items:
        if item["key"] not in obj:
            if optional:
                continue
            raise ConfigError(f"key {item['key']!r} not found in {kind} {name!r}")
        mode = int(item.get("mode", default_mode))
        out[_safe_relative(item["path"])] = (obj[item["key"]], mode)
    return out


def _downward_files(
    pod: JSON, src: JSON, default_mode: int, allocatable: Mapping[str, str]
) -> dict[str, tuple[bytes, int]]:
    out: dict[str, tuple[bytes, int]] = {}
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    for item in src.get("items") or []:
        if "fieldRef" in item:
            value = field_value(pod, item["fieldRef"]["fieldPath"])
        else:
            ref = item["resourceFieldRef"]
            container = containers.get(ref.get("containerName", ""), {})
            value = resource_value(container, ref, allocatable)
        out[_safe_relative(item["path"])] = (value.encode(), int(item.get("mode", default_mode)))
    return out


def _projected_files(
    pod: JSON,
    src: JSON,
    config_maps: Objects,
    secrets: Objects,
    allocatable: Mapping[str, str],
    token: TokenSource | None,
) -> dict[str, tuple[bytes, int]]:
    mode = int(src.get("defaultMode", DEFAULT_MODE))
    out: dict[str, tuple[bytes, int]] = {}
    for source in src.get("sources") or []:
        if "configMap" in source:
            cm = source["configMap"]
            out.update(_key_files("ConfigMap", cm["name"], cm, config_maps, mode))
        elif "secret" in source:
            sec = source["secret"]
            out.update(_key_files("Secret", sec["name"], sec, secrets, mode))
        elif "downwardAPI" in source:
            out.update(_downward_files(pod, source["downwardAPI"], mode, allocatable))
        elif "serviceAccountToken" in source and token is not None:
            sat = source["serviceAccountToken"]
            value = token(sat.get("audience"), int(sat.get("expirationSeconds", 3600)))
            out[_safe_relative(sat["path"])] = (value.encode(), mode)
        else:
            raise ConfigError(f"unsupported projected source {sorted(source)}")
    return out


def plan_volumes(
    pod: JSON,
    config_maps: Objects,
    secrets: Objects,
    sandbox: Path,
    pvc_root: Path,
    allocatable: Mapping[str, str] | None = None,
    token: TokenSource | None = None,
) -> dict[str, Volume]:
    """What each of the pod's volumes becomes (raises :class:`ConfigError`)."""
    alloc = allocatable or {}
    out: dict[str, Volume] = {}
    for vol in pod["spec"].get("volumes") or []:
        name = vol["name"]
        path = sandbox / "volumes" / name
        if "configMap" in vol:
            src = vol["configMap"]
            mode = int(src.get("defaultMode", DEFAULT_MODE))
            files = _key_files("ConfigMap", src["name"], src, config_maps, mode)
            out[name] = Volume(name, "files", path, files, read_only=True)
        elif "secret" in vol:
            src = vol["secret"]
            mode = int(src.get("defaultMode", DEFAULT_MODE))
            files = _key_files("Secret", src["secretName"], src, secrets, mode)
            out[name] = Volume(name, "files", path, files, read_only=True)
        elif "downwardAPI" in vol:
            src = vol["downwardAPI"]
            mode = int(src.get("defaultMode", DEFAULT_MODE))
            out[name] = Volume(
                name, "files", path, _downward_files(pod, src, mode, alloc), read_only=True
            )
        elif "projected" in vol:
            files = _projected_files(pod, vol["projected"], config_maps, secrets, alloc, token)
            out[name] = Volume(name, "files", path, files, read_only=True)
        elif "emptyDir" in vol:
            src = vol["emptyDir"] or {}
            limit = src.get("sizeLimit")
            size = int(parse_quantity(limit)) if limit else None
            if src.get("medium") == "Memory":
                out[name] = Volume(name, "tmpfs", None, size_bytes=size)
            else:
                out[name] = Volume(name, "dir", path, size_bytes=size)
        elif "persistentVolumeClaim" in vol:
            src = vol["persistentVolumeClaim"]
            claim = _safe_relative(src["claimName"])
            out[name] = Volume(name, "host", pvc_root / claim, read_only=bool(src.get("readOnly")))
        elif "hostPath" in vol:
            out[name] = Volume(name, "host", Path(vol["hostPath"]["path"]))
        else:
            kinds = sorted(k for k in vol if k != "name")
            raise ConfigError(f"volume {name!r}: unsupported source {kinds}")
    return out


def plan_mounts(container: JSON, volumes: Mapping[str, Volume]) -> list[Mount]:
    """The container's ``volumeMounts`` as binds of the planned volumes (``subPath`` too),
    parents before children."""
    mounts: list[Mount] = []
    for vm in container.get("volumeMounts") or []:
        vol = volumes.get(vm["name"])
        if vol is None:
            raise ConfigError(f"volumeMount {vm['name']!r} names no volume")
        read_only = bool(vm.get("readOnly")) or vol.read_only
        target = str(PurePosixPath(vm["mountPath"]))
        if vol.kind == "tmpfs":
            mounts.append(Mount(target, None, read_only, vol.size_bytes))
            continue
        assert vol.path is not None
        source = vol.path / _safe_relative(vm["subPath"]) if vm.get("subPath") else vol.path
        mounts.append(Mount(target, source, read_only))
    return sorted(mounts, key=lambda m: m.target.count("/"))


def materialize(volumes: Mapping[str, Volume], fs_group: int | None) -> None:
    """Create what the volumes need on the host: files (group ``fs_group``, as the kubelet
    does for a pod's fsGroup), emptyDir directories (world-writable, as the kubelet makes
    them), PVC directories (created when missing, writable by every pod)."""
    for vol in volumes.values():
        if vol.kind == "tmpfs" or vol.path is None:
            continue
        if vol.kind == "files":
            vol.path.mkdir(parents=True, exist_ok=True)
            for rel, (data, mode) in vol.files.items():
                target = vol.path / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                target.chmod(mode)
                if fs_group is not None:
                    os.chown(target, 0, fs_group)
        elif vol.kind == "dir" or (vol.kind == "host" and not vol.path.exists()):
            vol.path.mkdir(parents=True, exist_ok=True)
            vol.path.chmod(EMPTY_DIR_MODE)
