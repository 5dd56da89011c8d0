"""Team defaults in the operator: which profiles a job gets, and freezing them.

The resolution itself is :mod:`kubetune.api.profiles` (shared with ``kubetune validate
--resolved``). Here:

* :class:`ProfileReader` reads the profiles that may apply to a job -- fresh from the API
  server, and only for a job not resolved yet: a profile created just before its job (one
  ``kubectl apply -f dir/``) is never missed, and a resolved job costs no request.
* :func:`resolve_job` is pure: it gives the job as :func:`~kubetune_operator.lifecycle.decide`
  must see it -- its own spec laid over its profiles -- and a :class:`ProfileResolution`
  that decide records in ``status.profiles`` and ``status.profileDefaults``.

Freezing: once ``status.profiles`` is recorded (an empty list too: "no profile applied"),
the job is resolved from ``status.profileDefaults`` only, never from the live profiles: a
later profile edit does not change a running or retrying job (its next attempt must run the
configuration the first one ran). The job's own spec still applies on top as it changes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from kubetune.api.intent import authored_spec
from kubetune.api.job import GROUP, VERSION
from kubetune.api.profiles import (
    CLUSTER_PROFILE_PLURAL,
    PROFILE_PLURAL,
    Profile,
    ProfileNotFoundError,
    ProfileSet,
    merge_layers,
    overlay_spec,
    select_layers,
)
from kubetune_operator.kube import ApiError, KubeClient

logger = logging.getLogger("kubetune.operator")

#: How long a job whose ``spec.profile`` names no profile waits (from its creation) for the
#: profile to appear before it fails as ProfileNotFound: manifests applied together may
#: reach the API server job first.
PROFILE_WAIT_SECONDS = 60.0
#: How often such a job looks again.
PROFILE_RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class ProfileResolution:
    """How a job's profiles were resolved (what decide records or reports)."""

    #: ``status.profiles`` entries, lowest precedence first.
    applied: tuple[dict[str, Any], ...] = ()
    #: What the profiles set, merged (``status.profileDefaults``).
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: Resolved now from the live profiles, to be recorded; False: frozen in the status.
    fresh: bool = True
    #: Why it could not be resolved (``spec.profile`` names no profile), else None.
    missing: str | None = None


def is_frozen(raw: Mapping[str, Any]) -> bool:
    """The job's profiles are recorded in its status -- or the operator acted on the job
    before it knew profiles (``observedGeneration`` without ``profiles``: a job from before
    an upgrade), which must not pick up profiles half-way either."""
    status = raw.get("status") or {}
    return status.get("profiles") is not None or status.get("observedGeneration") is not None


def resolve_job(
    raw: dict[str, Any], profiles: ProfileSet | None
) -> tuple[dict[str, Any], ProfileResolution | None]:
    """``raw`` as decide must see it, and its resolution (None: nothing to record, as when
    no profiles were read for an unresolved job)."""
    status = raw.get("status") or {}
    if is_frozen(raw):
        defaults = status.get("profileDefaults") or {}
        frozen = ProfileResolution(tuple(status.get("profiles") or ()), defaults, fresh=False)
        if not defaults:
            return raw, frozen
        return overlay_spec({**raw, "spec": authored_spec(raw)}, defaults)[0], frozen
    if profiles is None:
        return raw, None
    spec = raw.get("spec") or {}
    namespace = str((raw.get("metadata") or {}).get("namespace") or "default")
    try:
        layers = select_layers(namespace, spec.get("method"), spec.get("profile"), profiles)
    except ProfileNotFoundError as exc:
        return raw, ProfileResolution(missing=str(exc))
    if not layers:
        return raw, ProfileResolution()
    defaults, _ = merge_layers(layers)
    merged, _ = overlay_spec({**raw, "spec": authored_spec(raw)}, defaults)
    return merged, ProfileResolution(tuple(layer.applied() for layer in layers), defaults)


def _parse(items: list[Any], kind: str) -> tuple[Profile, ...]:
    out = []
    for item in items:
        try:
            out.append(Profile.from_body({**item, "kind": kind}))
        except (ValidationError, ValueError) as exc:
            # The API server's schema admits only valid profiles; skip what slipped past.
            name = (item.get("metadata") or {}).get("name")
            logger.warning("ignoring unreadable %s %s: %s", kind, name, exc)
    return tuple(out)


class ProfileReader:
    """Reads the profiles of a namespace (and the cluster's) for jobs not resolved yet."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client

    async def _list(self, plural: str, namespace: str | None = None) -> list[Any]:
        path = KubeClient.path(plural, namespace, group=GROUP, version=VERSION)
        try:
            return list((await self.client.get(path)).get("items") or [])
        except ApiError as exc:
            if exc.not_found:
                return []  # the profile CRDs are not installed: no profiles
            raise  # never "could not read" as "none": the reconcile is retried

    async def read(self, namespace: str) -> ProfileSet:
        cluster = _parse(await self._list(CLUSTER_PROFILE_PLURAL), "ClusterFineTuneProfile")
        namespaced = _parse(await self._list(PROFILE_PLURAL, namespace), "FineTuneProfile")
        labels: dict[str, str] = {}
        selectors = [p.spec.namespace_selector for p in cluster if p.spec.namespace_selector]
        if any(s.match_labels or s.match_expressions for s in selectors):
            try:
                body = await self.client.get(KubeClient.path("namespaces", name=namespace))
            except ApiError as exc:
                if not exc.not_found:
                    raise
                body = {}
            labels = dict((body.get("metadata") or {}).get("labels") or {})
        return ProfileSet(cluster, namespaced, labels)
