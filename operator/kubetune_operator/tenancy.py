"""Per-tenant guardrails: the chart's tenant policy tiers, enforced by the operator too.

The API server enforces each tier first (the chart's ValidatingAdmissionPolicy, bound to
the tier's namespaces, reading the tier's parameters from a ConfigMap). The operator checks
the same limits again before it creates any pod (defence in depth: a job created before
the policy existed, or while its binding was missing, is still refused), reading the very
same ConfigMaps:

* each ConfigMap in the operator's namespace labelled ``kubetune.io/tenant-policy=<tier>``
  is a tier; its ``namespaceSelector`` key (a JSON label selector, written by the chart
  from the same value as the binding's) says which namespaces it governs;
* every tier whose selector matches the job's namespace applies (as every matching binding
  does in the API server);
* limit keys (comma-separated lists, numbers as strings): ``allowedImages`` (prefixes),
  ``allowedServiceAccounts``, ``allowedPriorityClasses``, ``allowedTolerationKeys`` (exact
  names), ``maxGPUsPerJob``, ``maxNodesPerJob``, ``maxGPUHoursPerJob``. An absent key sets
  no limit; a present, empty list allows nothing.

Two things a tier never allows unless it names them: a ``system-*`` priority class, and a
toleration without a key (it tolerates every taint). A ConfigMap that cannot be read (a bad
selector or number) applies to every namespace and refuses every job: a guardrail fails
closed.

:func:`violations` and :func:`applicable` are pure; :class:`TenantPolicies` fetches the
ConfigMaps and namespace labels for the controller (cached for a few seconds) so that the
lifecycle's ``decide`` stays pure.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from kubetune.api.job import FineTuneJobSpec
from kubetune_operator.kube import ApiError, KubeClient

logger = logging.getLogger("kubetune.operator.tenancy")

#: Label of a tier's parameters ConfigMap; its value is the tier's name.
TIER_LABEL = "kubetune.io/tenant-policy"
SELECTOR_KEY = "namespaceSelector"
IMAGES_KEY = "allowedImages"
SERVICE_ACCOUNTS_KEY = "allowedServiceAccounts"
PRIORITY_CLASSES_KEY = "allowedPriorityClasses"
TOLERATION_KEYS_KEY = "allowedTolerationKeys"
MAX_GPUS_KEY = "maxGPUsPerJob"
MAX_NODES_KEY = "maxNodesPerJob"
MAX_GPU_HOURS_KEY = "maxGPUHoursPerJob"

DEFAULT_SERVICE_ACCOUNT = "default"
SYSTEM_PRIORITY_PREFIX = "system-"
ADVICE = "ask your platform team"
#: How long fetched tiers and namespace labels are reused before they are read again.
CACHE_SECONDS = 10.0


# -- label selectors ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Requirement:
    """One ``matchExpressions`` entry of a label selector."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        raise ValueError(f"unknown label selector operator {self.operator!r}")


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes ``LabelSelector``; the empty selector matches every namespace (as a
    binding's empty ``namespaceSelector`` does)."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, data: Any) -> LabelSelector:
        """From the API shape (``matchLabels``/``matchExpressions``); ValueError if malformed."""
        if not isinstance(data, Mapping):
            raise ValueError("a label selector must be an object")
        unknown = set(data) - {"matchLabels", "matchExpressions"}
        if unknown:
            raise ValueError(f"unknown label selector fields {sorted(unknown)}")
        labels = data.get("matchLabels") or {}
        if not isinstance(labels, Mapping):
            raise ValueError("matchLabels must be an object")
        expressions: list[Requirement] = []
        for item in data.get("matchExpressions") or []:
            if not isinstance(item, Mapping) or "key" not in item or "operator" not in item:
                raise ValueError("each matchExpressions entry needs a key and an operator")
            requirement = Requirement(
                str(item["key"]), str(item["operator"]), tuple(map(str, item.get("values") or ()))
            )
            if requirement.operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
                raise ValueError(f"unknown label selector operator {requirement.operator!r}")
            if requirement.operator in ("In", "NotIn") and not requirement.values:
                raise ValueError(f"operator {requirement.operator} needs values")
            expressions.append(requirement)
        return cls(tuple(sorted((str(k), str(v)) for k, v in labels.items())), tuple(expressions))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )


# -- tiers -------------------------------------------------------------------------------------
def _names(raw: str | None) -> tuple[str, ...] | None:
    """A comma-separated list; None (no limit) when the key is absent."""
    if raw is None:
        return None
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _number(raw: str | None, kind: Callable[[str], Any], key: str) -> Any:
    if raw is None:
        return None
    try:
        value = kind(raw.strip())
    except ValueError:
        raise ValueError(f"{key} {raw!r} is not a number") from None
    if value < 0:
        raise ValueError(f"{key} {raw!r} is negative")
    return value


@dataclass(frozen=True)
class TenantTier:
    """One tier's limits (None: no limit), as read from its parameters ConfigMap."""

    name: str
    source: str = ""
    selector: LabelSelector = field(default_factory=LabelSelector)
    allowed_images: tuple[str, ...] | None = None
    allowed_service_accounts: tuple[str, ...] | None = None
    allowed_priority_classes: tuple[str, ...] | None = None
    allowed_toleration_keys: tuple[str, ...] | None = None
    max_gpus_per_job: int | None = None
    max_nodes_per_job: int | None = None
    max_gpu_hours_per_job: float | None = None
    #: Why the ConfigMap could not be read; such a tier refuses every job.
    error: str | None = None

    @classmethod
    def from_config_map(cls, body: Mapping[str, Any]) -> TenantTier:
        """The tier a parameters ConfigMap describes (never raises: a malformed one becomes
        a tier with :attr:`error`, which fails closed)."""
        meta = body.get("metadata") or {}
        name = str((meta.get("labels") or {}).get(TIER_LABEL) or meta.get("name") or "?")
        source = f"ConfigMap {meta.get('namespace', '')}/{meta.get('name', '')}"
        data: Mapping[str, str] = body.get("data") or {}
        try:
            selector = LabelSelector.parse(json.loads(data.get(SELECTOR_KEY) or "{}"))
            return cls(
                name=name,
                source=source,
                selector=selector,
                allowed_images=_names(data.get(IMAGES_KEY)),
                allowed_service_accounts=_names(data.get(SERVICE_ACCOUNTS_KEY)),
                allowed_priority_classes=_names(data.get(PRIORITY_CLASSES_KEY)),
                allowed_toleration_keys=_names(data.get(TOLERATION_KEYS_KEY)),
                max_gpus_per_job=_number(data.get(MAX_GPUS_KEY), int, MAX_GPUS_KEY),
                max_nodes_per_job=_number(data.get(MAX_NODES_KEY), int, MAX_NODES_KEY),
                max_gpu_hours_per_job=_number(
                    data.get(MAX_GPU_HOURS_KEY), float, MAX_GPU_HOURS_KEY
                ),
            )
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            return cls(name=name, source=source, error=str(exc))

    def governs(self, namespace_labels: Mapping[str, str]) -> bool:
        """Does this tier apply to a namespace with these labels? An unreadable tier applies
        everywhere (its selector cannot be trusted either)."""
        return self.error is not None or self.selector.matches(namespace_labels)


def applicable(
    tiers: Iterable[TenantTier], namespace_labels: Mapping[str, str]
) -> tuple[TenantTier, ...]:
    """The tiers governing a namespace, all of them (as all matching bindings apply)."""
    return tuple(t for t in tiers if t.governs(namespace_labels))


# -- the check ---------------------------------------------------------------------------------
def _listed(values: Sequence[str]) -> str:
    return ", ".join(values) if values else "none"


def _tier_violations(spec: FineTuneJobSpec, tier: TenantTier) -> list[str]:
    where = f"for namespaces of tier {tier.name!r}"
    if tier.error is not None:
        return [f"tenant policy tier {tier.name!r} ({tier.source}) is unreadable: {tier.error}"]
    out: list[str] = []
    images = tier.allowed_images
    if spec.image and images is not None and not any(spec.image.startswith(p) for p in images):
        out.append(
            f"spec.image {spec.image!r} is not allowed {where} (allowed prefixes: "
            f"{_listed(images)})"
        )
    account = spec.service_account_name or DEFAULT_SERVICE_ACCOUNT
    if tier.allowed_service_accounts is not None and account not in tier.allowed_service_accounts:
        out.append(
            f"spec.serviceAccountName {account!r} is not allowed {where} (allowed: "
            f"{_listed(tier.allowed_service_accounts)})"
        )
    res = spec.resources
    priority = res.priority_class_name
    if priority:
        if tier.allowed_priority_classes is not None:
            refused = priority not in tier.allowed_priority_classes
        else:
            refused = priority.startswith(SYSTEM_PRIORITY_PREFIX)
        if refused:
            out.append(
                f"spec.resources.priorityClassName {priority!r} is not allowed {where} "
                f"(allowed: {_listed(tier.allowed_priority_classes or ())}; system-* only "
                "when listed)"
            )
    for index, toleration in enumerate(res.tolerations):
        key = toleration.key or ""
        if not key:
            out.append(
                f"spec.resources.tolerations[{index}] has no key, so it tolerates every taint; "
                f"not allowed {where}"
            )
        elif tier.allowed_toleration_keys is not None and key not in tier.allowed_toleration_keys:
            out.append(
                f"spec.resources.tolerations[{index}].key {key!r} is not allowed {where} "
                f"(allowed: {_listed(tier.allowed_toleration_keys)})"
            )
    gpus = res.nodes * res.gpus_per_node
    if tier.max_gpus_per_job is not None and gpus > tier.max_gpus_per_job:
        out.append(
            f"the job asks for {gpus} GPUs (spec.resources.nodes {res.nodes} x gpusPerNode "
            f"{res.gpus_per_node}); at most {tier.max_gpus_per_job} are allowed {where}"
        )
    if tier.max_nodes_per_job is not None and res.nodes > tier.max_nodes_per_job:
        out.append(
            f"spec.resources.nodes {res.nodes} is more than the {tier.max_nodes_per_job} "
            f"allowed {where}"
        )
    limit = tier.max_gpu_hours_per_job
    budget = spec.run_policy.gpu_hour_budget
    if limit is not None and (budget is None or budget > limit):
        shown = "not set" if budget is None else f"{budget:g}"
        out.append(
            f"spec.runPolicy.gpuHourBudget is {shown}; it must be set and at most {limit:g} "
            f"GPU-hours {where}"
        )
    return out


def violations(spec: FineTuneJobSpec, tiers: Iterable[TenantTier]) -> list[str]:
    """What ``spec`` asks for that the governing ``tiers`` forbid, one sentence each (empty:
    allowed), each naming the field, the value, what is allowed and the tier."""
    out = [problem for tier in tiers for problem in _tier_violations(spec, tier)]
    if out:
        out[-1] += f"; {ADVICE}"
    return out


# -- fetching (for the controller) -------------------------------------------------------------
class TenantPolicies:
    """The tiers (ConfigMaps in the operator's namespace) and namespace labels, fetched at
    most every :data:`CACHE_SECONDS`. Reads fail loudly (an :class:`ApiError` propagates, so
    the reconcile is retried): the operator never treats "could not read the policy" as
    "no policy"."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        *,
        ttl: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.ttl = ttl
        self._clock = clock
        self._tiers: tuple[TenantTier, ...] = ()
        self._tiers_at: float | None = None
        self._labels: dict[str, tuple[dict[str, str], float]] = {}

    def _fresh(self, at: float | None) -> bool:
        return at is not None and self._clock() - at < self.ttl

    async def refresh(self, namespace: str) -> None:
        """Make :meth:`for_namespace` current for ``namespace`` (no request when fresh)."""
        if not self._fresh(self._tiers_at):
            path = KubeClient.path("configmaps", self.namespace)
            try:
                listed = await self.client.get(f"{path}?labelSelector={quote(TIER_LABEL)}")
            except ApiError as exc:
                if not exc.not_found:
                    raise
                listed = {}  # no such namespace: no ConfigMaps
            tiers = [TenantTier.from_config_map(item) for item in listed.get("items") or []]
            for tier in tiers:
                if tier.error:
                    logger.warning("tenant policy %s is unreadable: %s", tier.source, tier.error)
            self._tiers = tuple(sorted(tiers, key=lambda t: t.name))
            self._tiers_at = self._clock()
        if not self._tiers:
            return  # no tiers: namespace labels are not needed
        cached = self._labels.get(namespace)
        if cached is None or not self._fresh(cached[1]):
            try:
                body = await self.client.get(KubeClient.path("namespaces", name=namespace))
            except ApiError as exc:
                if not exc.not_found:
                    raise
                body = {}  # the namespace is going away (and its jobs with it)
            labels = dict((body.get("metadata") or {}).get("labels") or {})
            self._labels[namespace] = (labels, self._clock())

    def for_namespace(self, namespace: str) -> tuple[TenantTier, ...]:
        """The tiers governing ``namespace`` as last fetched."""
        if not self._tiers:
            return ()
        labels = self._labels.get(namespace, ({}, 0.0))[0]
        return applicable(self._tiers, labels)
