"""``kubetune validate --resolved``: a job as the operator will run it, with its team defaults.

Profiles come from ``--profiles`` files (offline: FineTuneProfile, ClusterFineTuneProfile
and Namespace documents, the latter for their labels) or, without that option, from the
cluster of the current kubeconfig (through ``kubectl``, so the user's own credentials and
context apply). The resolution is :mod:`kubetune.api.profiles`, the operator's own.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kubetune.api.crd import profile_fragment_schema
from kubetune.api.problems import Problem
from kubetune.api.profiles import (
    CLUSTER_PROFILE_KIND,
    CLUSTER_PROFILE_PLURAL,
    JOB_SOURCE,
    PROFILE_KIND,
    PROFILE_PLURAL,
    Layer,
    Profile,
    ProfileNotFoundError,
    ProfileSet,
    apply_profiles,
    check_fragment,
    select_layers,
)
from kubetune.api.resolve import ResolutionError, ResolvedJob, resolve
from kubetune.api.validation import ValidationReport, load_documents, validate_manifest

BUILT_IN = "built-in default"


class ProfileSourceError(RuntimeError):
    """Profiles could not be read (a bad file, kubectl failing)."""


@dataclass
class ProfileFiles:
    """Profiles and namespace labels read from ``--profiles`` files."""

    cluster: list[Profile] = field(default_factory=list)
    namespaced: list[Profile] = field(default_factory=list)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)

    def for_namespace(self, namespace: str) -> ProfileSet:
        return ProfileSet(
            tuple(self.cluster),
            tuple(p for p in self.namespaced if (p.namespace or namespace) == namespace),
            self.labels.get(namespace, {}),
        )


def _parse_profile(name: str, doc: Mapping[str, Any]) -> Profile:
    spec = doc.get("spec") or {}
    schema = profile_fragment_schema()
    problems = check_fragment(schema, spec.get("defaults"), "spec.defaults")
    for method, fragment in (spec.get("methods") or {}).items():
        problems += check_fragment(schema, fragment, f"spec.methods.{method}")
    try:
        profile = Profile.from_body(doc)
    except (ValidationError, ValueError) as exc:
        problems.append(str(exc))
        profile = None
    if problems or profile is None:
        raise ProfileSourceError(f"{name}: invalid {doc.get('kind')}: " + "; ".join(problems))
    return profile


def read_profile_files(paths: Iterable[Path]) -> ProfileFiles:
    """Every profile (and Namespace, for its labels) in ``paths``."""
    found = ProfileFiles()
    for path in paths:
        for name, doc in load_documents(path):
            if not isinstance(doc, dict):
                continue
            kind = doc.get("kind")
            if kind == "Namespace":
                meta = doc.get("metadata") or {}
                found.labels[str(meta.get("name"))] = dict(meta.get("labels") or {})
            elif kind == CLUSTER_PROFILE_KIND:
                found.cluster.append(_parse_profile(name, doc))
            elif kind == PROFILE_KIND:
                found.namespaced.append(_parse_profile(name, doc))
    return found


class ClusterProfiles:
    """Profiles read from the cluster with ``kubectl`` (once per namespace)."""

    def __init__(self, kubeconfig: Path | None = None, kubectl: str = "kubectl") -> None:
        self.kubeconfig = kubeconfig
        self.kubectl = kubectl
        self._cluster: tuple[Profile, ...] | None = None

    def _get(self, *args: str) -> dict[str, Any]:
        binary = shutil.which(self.kubectl)
        if binary is None:
            raise ProfileSourceError(
                f"{self.kubectl} not found: install it, or pass the profiles with --profiles"
            )
        cmd = [binary, *args, "-o", "json"]
        if self.kubeconfig is not None:
            cmd += ["--kubeconfig", str(self.kubeconfig)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            if "doesn't have a resource type" in proc.stderr:
                return {}  # the profile CRDs are not installed: no profiles
            raise ProfileSourceError(f"{' '.join(cmd[1:])}: {proc.stderr.strip()}")
        data: dict[str, Any] = json.loads(proc.stdout or "{}")
        return data

    def _profiles(self, kind: str, items: list[Any]) -> tuple[Profile, ...]:
        return tuple(_parse_profile(kind, {**item, "kind": kind}) for item in items)

    def for_namespace(self, namespace: str) -> ProfileSet:
        if self._cluster is None:
            listed = self._get("get", CLUSTER_PROFILE_PLURAL)
            self._cluster = self._profiles(CLUSTER_PROFILE_KIND, listed.get("items") or [])
        namespaced = self._get("get", PROFILE_PLURAL, "--namespace", namespace)
        labels: dict[str, str] = {}
        if any(p.spec.namespace_selector for p in self._cluster):
            ns = self._get("get", "namespace", namespace)
            labels = dict((ns.get("metadata") or {}).get("labels") or {})
        return ProfileSet(
            self._cluster, self._profiles(PROFILE_KIND, namespaced.get("items") or []), labels
        )


@dataclass
class Resolved:
    """One job resolved with its profiles."""

    namespace: str
    layers: list[Layer]
    report: ValidationReport
    resolved: ResolvedJob | None
    sources: dict[str, str]
    errors: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.errors and self.resolved is not None


def resolve_with_profiles(doc: Mapping[str, Any], profiles: ProfileSet, namespace: str) -> Resolved:
    """``doc`` with ``profiles`` applied, validated and resolved as the operator does it."""
    spec = doc.get("spec") or {}
    try:
        layers = select_layers(namespace, spec.get("method"), spec.get("profile"), profiles)
    except ProfileNotFoundError as exc:
        report = ValidationReport(None, [Problem("spec.profile", str(exc))])
        return Resolved(namespace, [], report, None, {}, report.errors)
    merged, sources = apply_profiles(doc, layers)
    report = validate_manifest(merged)
    resolved = None
    errors = list(report.errors)
    if report.job is not None:
        try:
            resolved = resolve(report.job)
        except ResolutionError as exc:
            errors.append(Problem("spec", str(exc)))
    return Resolved(namespace, layers, report, resolved, sources, errors)


def _source(sources: Mapping[str, str], path: str) -> str:
    probe = path
    while probe:
        if probe in sources:
            return sources[probe]
        probe = probe.rpartition(".")[0]
    return BUILT_IN


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _emit(
    value: Mapping[str, Any], sources: Mapping[str, str], prefix: str, indent: int
) -> list[str]:
    lines = []
    pad = "  " * indent
    for key, sub in value.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(sub, Mapping) and sub:
            lines.append(f"{pad}{key}:")
            lines += _emit(sub, sources, path, indent + 1)
        else:
            lines.append(f"{pad}{key}: {_scalar(sub)}  # {_source(sources, path)}")
    return lines


def render_resolved(name: str, result: Resolved) -> str:
    """The resolved spec as YAML, each leaf with a comment naming the layer that set it."""
    lines = [f"# {name}: resolved in namespace {result.namespace}"]
    lines.append("# layers, lowest precedence first (later ones win; the job's own spec last):")
    lines.append(f"#   - {BUILT_IN}s")
    for layer in result.layers:
        version = f" (resourceVersion {layer.resource_version})" if layer.resource_version else ""
        lines.append(f"#   - {layer.source}{version}")
    lines.append(f"#   - {JOB_SOURCE} (its own spec)")
    assert result.resolved is not None
    spec = result.resolved.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    lines.append("spec:")
    lines += _emit(spec, result.sources, "", 1)
    derived = result.resolved.derived.model_dump(mode="json", by_alias=True)
    lines.append("# derived: " + ", ".join(f"{k}={v}" for k, v in derived.items()))
    return "\n".join(lines) + "\n"
