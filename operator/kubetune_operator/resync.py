"""Reconcile the cache against a fresh LIST: the deletions a watch re-list never reports.

Kopf re-lists after ``410 Gone`` (or an API server restart) and re-adds every listed object
to its indices, but an object deleted during the gap is never removed: a deleted pod would
look Running forever. :func:`resync` lists FineTuneJobs and the operator's pods itself
(paginated; each scope's pages share one snapshot, so one resourceVersion) and tombstones
every indexed entry the list lacks whose resourceVersion is not newer than the list's
(newer means the object was created after the list, not deleted). Entries are compared by
uid, so an object deleted and re-created under the same name during the gap is caught too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from kubetune_operator import naming
from kubetune_operator.cache import JobKey, Snapshot, newer_or_same
from kubetune_operator.kube import ApiError, KubeClient

logger = logging.getLogger(__name__)

PAGE_SIZE = 500
#: Restarts of one scope's list when its continue token expires (410 Gone mid-list).
LIST_RETRIES = 3


@dataclass
class ResyncStats:
    """What one resync found (pass one to :func:`resync` to read it; also logged)."""

    jobs_listed: int = 0
    pods_listed: int = 0
    jobs_vanished: int = 0
    pods_vanished: int = 0
    requests: int = 0
    affected: set[JobKey] = field(default_factory=set)


@dataclass(frozen=True)
class _Listed:
    resource_version: str
    # (namespace, name) -> uid
    objects: dict[tuple[str, str], str]


async def _list(client: KubeClient, path: str, stats: ResyncStats, selector: str = "") -> _Listed:
    """Every page of one LIST; the resourceVersion is the snapshot's (the first page's)."""
    for attempt in range(LIST_RETRIES):
        objects: dict[tuple[str, str], str] = {}
        rv = ""
        token = ""
        try:
            while True:
                params = {"limit": str(PAGE_SIZE)}
                if selector:
                    params["labelSelector"] = selector
                if token:
                    params["continue"] = token
                page = await client.get(path + "?" + urlencode(params))
                stats.requests += 1
                meta: dict[str, Any] = page.get("metadata") or {}
                rv = rv or str(meta.get("resourceVersion") or "")
                for item in page.get("items") or ():
                    imeta = item.get("metadata") or {}
                    key = (str(imeta.get("namespace") or ""), str(imeta.get("name") or ""))
                    objects[key] = str(imeta.get("uid") or "")
                token = str(meta.get("continue") or "")
                if not token:
                    return _Listed(rv, objects)
        except ApiError as exc:
            if exc.status != 410 or attempt == LIST_RETRIES - 1:
                raise
            logger.info("resync: list %s expired mid-way, listing again", path)
    raise AssertionError("unreachable")


def _absent(
    listed: _Listed, namespace: str, name: str, uid: str, rv: str, scope: str | None
) -> bool:
    """Is this indexed entry (in ``scope``: one namespace, or None for all) a deleted one?"""
    if scope is not None and namespace != scope:
        return False
    listed_uid = listed.objects.get((namespace, name))
    if listed_uid is not None and (not uid or not listed_uid or listed_uid == uid):
        return False
    # Not listed (or listed as another object): deleted, unless created after the list.
    return bool(listed.resource_version) and newer_or_same(listed.resource_version, rv)


async def resync(
    client: KubeClient,
    cache: Snapshot,
    namespaces: Sequence[str],
    stats: ResyncStats | None = None,
) -> set[JobKey]:
    """List jobs and pods, tombstone the cache entries the lists lack; the job keys affected
    (vanished jobs, and jobs whose pods vanished) are returned for requeueing. A job key
    for which ``cache.job(key)`` is now None was deleted. Entries already hidden by an
    earlier resync are not counted again."""
    stats = stats if stats is not None else ResyncStats()
    cache.prune()
    scopes: list[str | None] = list(namespaces) if namespaces else [None]
    for scope in scopes:
        jobs = await _list(
            client,
            client.path(naming.PLURAL, scope, group=naming.GROUP, version=naming.VERSION),
            stats,
        )
        pods = await _list(client, client.path("pods", scope), stats, selector=naming.LABEL_JOB)
        stats.jobs_listed += len(jobs.objects)
        stats.pods_listed += len(pods.objects)
        for key, body in list(cache.indexed_jobs()):
            meta = body.get("metadata") or {}
            uid = str(meta.get("uid") or "")
            rv = str(meta.get("resourceVersion") or "")
            if cache.job_hidden(key, body):
                continue
            if _absent(jobs, key[0], key[1], uid, rv, scope):
                cache.vanished_job(key, jobs.resource_version, uid=uid or None)
                stats.jobs_vanished += 1
                stats.affected.add(key)
        for key, pod in list(cache.indexed_pods()):
            if cache.pod_hidden(key[0], pod):
                continue
            if _absent(pods, key[0], pod.name, pod.uid, pod.resource_version, scope):
                cache.vanished_pod(key[0], pod.name, pods.resource_version, uid=pod.uid or None)
                stats.pods_vanished += 1
                stats.affected.add(key)
    if stats.affected:
        logger.warning(
            "resync: %d jobs and %d pods were deleted unseen (watch gap); requeueing %d jobs",
            stats.jobs_vanished,
            stats.pods_vanished,
            len(stats.affected),
        )
    else:
        logger.debug(
            "resync: cache agrees with %d jobs and %d pods", stats.jobs_listed, stats.pods_listed
        )
    return stats.affected
