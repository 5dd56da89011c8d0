"""Team defaults: FineTuneProfile (namespaced) and ClusterFineTuneProfile (cluster-wide).

A platform team writes the values every job of a team shares (trainer image, Kueue queue,
GPUs per node, tolerations, method defaults) once, in a profile; an application team's
FineTuneJob then names only what is its own. The operator and ``kubetune validate
--resolved`` resolve a job the same way, with the pure functions here.

Resolution order, lowest precedence first (each later layer wins over the earlier ones):

1. built-in defaults (the API models' defaults, filled when the merged spec is validated);
2. every ClusterFineTuneProfile whose ``namespaceSelector`` matches the job's namespace, in
   order of name: their ``defaults``;
3. the same profiles' ``methods.<method>`` (the overlay for the job's ``spec.method``);
4. the FineTuneProfile named ``default`` in the job's namespace: ``defaults``, then
   ``methods.<method>``;
5. the profile named by ``spec.profile`` (a FineTuneProfile of that name in the job's
   namespace, else the ClusterFineTuneProfile of that name, whatever its selector says):
   ``defaults``, then ``methods.<method>``;
6. the job's own spec (except a profile's ``dataset.provenance`` that requires approved
   data: it replaces the job's own, :func:`locked_provenance`).

Merging: objects merge key by key, recursively; lists and scalars replace (a profile's
``tolerations`` list is replaced whole by a job's, never concatenated); a null sets nothing.
A ClusterFineTuneProfile without ``namespaceSelector`` applies to no namespace by itself: it
is a preset that jobs name (``spec.profile``); ``namespaceSelector: {}`` matches every
namespace. Profiles only fill values a job could set itself: the merged spec is validated
and policy-checked like any other, so a profile grants nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from pydantic import Field

from kubetune.api.base import ApiModel
from kubetune.api.methods import Method

PROFILE_KIND: Final = "FineTuneProfile"
PROFILE_PLURAL: Final = "finetuneprofiles"
PROFILE_SINGULAR: Final = "finetuneprofile"
PROFILE_SHORT_NAMES = ["ftprofile"]
CLUSTER_PROFILE_KIND: Final = "ClusterFineTuneProfile"
CLUSTER_PROFILE_PLURAL: Final = "clusterfinetuneprofiles"
CLUSTER_PROFILE_SINGULAR: Final = "clusterfinetuneprofile"
CLUSTER_PROFILE_SHORT_NAMES = ["cftprofile"]
PROFILE_CATEGORIES = ["kubetune"]

#: The FineTuneProfile every job of its namespace gets, named or not.
DEFAULT_PROFILE: Final = "default"
#: Label the API server puts on every namespace (so selectors may pick namespaces by name).
NAMESPACE_NAME_LABEL: Final = "kubernetes.io/metadata.name"
#: The source name of values the job's own spec set (``sources`` of :func:`apply_profiles`).
JOB_SOURCE: Final = "FineTuneJob"
#: Spec fields a profile may not set: the job always names its method, and profiles do not
#: chain (a profile cannot name another profile).
NOT_IN_PROFILES: Final = ("method", "profile")

ProfileKind = Literal["FineTuneProfile", "ClusterFineTuneProfile"]


class LabelSelectorRequirement(ApiModel):
    """A label selector requirement (as in metav1.LabelSelector)."""

    key: str = Field(max_length=317, description="The label key the selector applies to.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="In, NotIn, Exists or DoesNotExist."
    )
    values: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Values for In and NotIn; empty for Exists and DoesNotExist.",
    )


class LabelSelector(ApiModel):
    """Selects namespaces by their labels; every requirement must hold (an empty selector
    matches every namespace)."""

    match_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels the namespace must carry with these values."
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, max_length=32, description="Further requirements on labels."
    )

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
            if req.operator == "In" and (not present or labels[req.key] not in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
        return True


class FineTuneProfileSpec(ApiModel):
    """Defaults for the FineTuneJobs of a namespace (the profile named ``default``) or of
    the jobs that name it (``spec.profile``)."""

    description: str | None = Field(
        default=None, max_length=1024, description="What the profile is for, for its users."
    )
    defaults: dict[str, Any] | None = Field(
        default=None,
        description="A partial FineTuneJob spec: every field is optional, types and bounds "
        "are those of FineTuneJob.spec. Applied under the job's own spec.",
    )
    methods: dict[Method, dict[str, Any]] | None = Field(
        default=None,
        description="Per method (full, lora, ...): a partial FineTuneJob spec applied over "
        "defaults, only to jobs of that method.",
    )


class ClusterFineTuneProfileSpec(FineTuneProfileSpec):
    """Defaults for the FineTuneJobs of every namespace its selector matches, or a preset
    jobs of any namespace may name (``spec.profile``)."""

    namespace_selector: LabelSelector | None = Field(
        default=None,
        description="Namespaces whose jobs get this profile without naming it ({}: every "
        "namespace). Absent: none; the profile is then a preset jobs name in spec.profile.",
    )


class ProfileNotFoundError(LookupError):
    """``spec.profile`` names a profile that exists neither in the job's namespace nor
    cluster-wide."""

    def __init__(self, name: str, namespace: str) -> None:
        super().__init__(
            f"spec.profile {name!r}: no FineTuneProfile {namespace}/{name} and no "
            f"ClusterFineTuneProfile {name}"
        )
        self.name = name
        self.namespace = namespace


@dataclass(frozen=True)
class Profile:
    """One profile object, as read from the cluster or from a file."""

    kind: ProfileKind
    name: str
    spec: ClusterFineTuneProfileSpec
    namespace: str | None = None
    resource_version: str | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Profile:
        """Parse a profile object (raises pydantic's ValidationError on a bad spec)."""
        kind = body.get("kind")
        if kind not in (PROFILE_KIND, CLUSTER_PROFILE_KIND):
            raise ValueError(f"not a profile: kind {kind!r}")
        meta = body.get("metadata") or {}
        model = ClusterFineTuneProfileSpec if kind == CLUSTER_PROFILE_KIND else FineTuneProfileSpec
        spec = model.model_validate(body.get("spec") or {}, by_alias=True)
        return cls(
            kind=kind,
            name=str(meta.get("name") or ""),
            spec=ClusterFineTuneProfileSpec.model_validate(spec.model_dump()),
            namespace=meta.get("namespace"),
            resource_version=meta.get("resourceVersion"),
        )

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class Layer:
    """One part of one profile, in resolution order."""

    kind: ProfileKind
    name: str
    section: str  # "defaults" or "methods.<method>"
    fragment: Mapping[str, Any]
    resource_version: str | None = None

    @property
    def source(self) -> str:
        """How ``kubetune validate --resolved`` names it, e.g.
        ``ClusterFineTuneProfile/gpu-team`` or ``FineTuneProfile/default (methods.lora)``."""
        where = "" if self.section == "defaults" else f" ({self.section})"
        return f"{self.kind}/{self.name}{where}"

    def applied(self) -> dict[str, Any]:
        """The ``status.profiles`` entry (camelCase, as stored)."""
        entry: dict[str, Any] = {"kind": self.kind, "name": self.name, "section": self.section}
        if self.resource_version:
            entry["resourceVersion"] = self.resource_version
        return entry


@dataclass(frozen=True)
class ProfileSet:
    """The profiles that may apply to a job: the cluster's ClusterFineTuneProfiles, the
    FineTuneProfiles of the job's namespace, and that namespace's labels."""

    cluster: tuple[Profile, ...] = ()
    namespaced: tuple[Profile, ...] = ()
    namespace_labels: Mapping[str, str] = field(default_factory=dict)


def _layers_of(profile: Profile, method: str | None) -> list[Layer]:
    layers = []
    if profile.spec.defaults:
        layers.append(
            Layer(
                profile.kind,
                profile.name,
                "defaults",
                profile.spec.defaults,
                profile.resource_version,
            )
        )
    overlay = (profile.spec.methods or {}).get(method) if method else None  # type: ignore[call-overload]
    if overlay:
        layers.append(
            Layer(
                profile.kind, profile.name, f"methods.{method}", overlay, profile.resource_version
            )
        )
    return layers


def select_layers(
    namespace: str, method: str | None, profile_name: str | None, profiles: ProfileSet
) -> list[Layer]:
    """The profile layers of a job in ``namespace``, lowest precedence first.

    Raises :class:`ProfileNotFoundError` when ``profile_name`` names no profile.
    """
    labels = {**profiles.namespace_labels, NAMESPACE_NAME_LABEL: namespace}
    matching = sorted(
        (
            p
            for p in profiles.cluster
            if p.spec.namespace_selector is not None and p.spec.namespace_selector.matches(labels)
        ),
        key=lambda p: p.name,
    )
    layers: list[Layer] = [
        Layer(p.kind, p.name, "defaults", p.spec.defaults, p.resource_version)
        for p in matching
        if p.spec.defaults
    ]
    for p in matching:
        layers += [layer for layer in _layers_of(p, method) if layer.section != "defaults"]
    own = {p.name: p for p in profiles.namespaced if p.namespace in (None, namespace)}
    if DEFAULT_PROFILE in own:
        layers += _layers_of(own[DEFAULT_PROFILE], method)
    if profile_name and not (profile_name == DEFAULT_PROFILE and DEFAULT_PROFILE in own):
        named = own.get(profile_name) or next(
            (p for p in profiles.cluster if p.name == profile_name), None
        )
        if named is None:
            raise ProfileNotFoundError(profile_name, namespace)
        layers += _layers_of(named, method)
    return layers


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``: objects merge recursively, lists and scalars replace,
    ``None`` in ``over`` sets nothing. Neither input is changed."""
    merged = copy.deepcopy(dict(base))
    for key, value in over.items():
        if value is None:
            continue
        below = merged.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            merged[key] = deep_merge(below, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _record(sources: dict[str, str], fragment: Mapping[str, Any], prefix: str, who: str) -> None:
    for key, value in fragment.items():
        if value is None:
            continue
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            if sources.get(path) is not None:
                del sources[path]  # an object replaces a scalar set below
            _record(sources, value, path, who)
            continue
        for stale in [p for p in sources if p.startswith((path + ".", path + "["))]:
            del sources[stale]
        sources[path] = who


def merge_layers(layers: Sequence[Layer]) -> tuple[dict[str, Any], dict[str, str]]:
    """The layers merged in order (what they contribute together), and which layer set
    each leaf (dotted spec path -> :attr:`Layer.source`)."""
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for layer in layers:
        merged = deep_merge(merged, layer.fragment)
        _record(sources, layer.fragment, "", layer.source)
    return merged, sources


def locked_provenance(defaults: Mapping[str, Any]) -> dict[str, Any] | None:
    """The profiles' ``dataset.provenance`` when it requires approved data: a job cannot
    lower it (nor point it at another allow-list); see docs/provenance.md."""
    dataset = defaults.get("dataset")
    prov = dataset.get("provenance") if isinstance(dataset, Mapping) else None
    if isinstance(prov, Mapping) and prov.get("requireApproved") is True:
        return copy.deepcopy(dict(prov))
    return None


def overlay_spec(
    job_raw: Mapping[str, Any], defaults: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """``job_raw`` (a whole FineTuneJob) with its spec laid over ``defaults``, and the
    leaves its own spec set (path -> :data:`JOB_SOURCE`).

    One exception to "the job wins": a profile's ``dataset.provenance`` that requires
    approved data replaces the job's own (:func:`locked_provenance`), so a platform team can
    enforce approved provenance for a namespace."""
    own = job_raw.get("spec") or {}
    sources: dict[str, str] = {}
    _record(sources, own, "", JOB_SOURCE)
    spec = deep_merge(defaults, own)
    locked = locked_provenance(defaults)
    if locked is not None:
        spec["dataset"] = {**(spec.get("dataset") or {}), "provenance": locked}
        for path in [p for p in sources if p.startswith("dataset.provenance")]:
            del sources[path]
    return {**job_raw, "spec": spec}, sources


def apply_profiles(
    job_raw: Mapping[str, Any], layers: Sequence[Layer]
) -> tuple[dict[str, Any], dict[str, str]]:
    """``job_raw`` with its profile layers applied under its own spec, and the source of
    every leaf the layers or the job set (dotted spec path -> ``Kind/name`` or
    ``FineTuneJob``). Leaves in neither come from the built-in defaults."""
    defaults, sources = merge_layers(layers)
    merged, own = overlay_spec(job_raw, defaults)
    for path in own:
        for stale in [p for p in sources if p == path or p.startswith((path + ".", path + "["))]:
            del sources[stale]
    sources.update(own)
    return merged, sources


def check_fragment(schema: Mapping[str, Any], value: Any, path: str = "") -> list[str]:
    """Problems of ``value`` against a structural schema (types, enums, bounds, unknown
    fields): what the API server checks of a profile, for profiles read from files."""
    problems: list[str] = []
    kind = schema.get("type")
    where = path or "<root>"
    if value is None:
        return problems
    python: dict[str, Any] = {
        "object": Mapping,
        "array": list,
        "string": str,
        "boolean": bool,
        "integer": int,
        "number": (int, float),
    }
    expected = python.get(str(kind))
    bad_bool = isinstance(value, bool) and kind in ("integer", "number")
    if expected is not None and (not isinstance(value, expected) or bad_bool):
        return [f"{where}: expected {kind}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(repr(v) for v in schema["enum"])
        problems.append(f"{where}: unsupported value {value!r}: supported values: {allowed}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{where}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{where}: {value} is above the maximum {schema['maximum']}")
    if isinstance(value, str) and "maxLength" in schema and len(value) > schema["maxLength"]:
        problems.append(f"{where}: longer than {schema['maxLength']} characters")
    if isinstance(value, Mapping):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields")
        for key, sub in value.items():
            sub_path = f"{path}.{key}" if path else str(key)
            if props is not None and key in props:
                problems += check_fragment(props[key], sub, sub_path)
            elif isinstance(extra, Mapping):
                problems += check_fragment(extra, sub, sub_path)
            elif props is not None and not preserve:
                problems.append(f"{sub_path}: unknown field")
        for key in schema.get("required") or ():
            if key not in value:
                problems.append(f"{path}.{key}: Required value" if path else f"{key}: Required")
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            problems += check_fragment(schema["items"], item, f"{path}[{index}]")
    return problems
