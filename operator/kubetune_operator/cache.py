"""What the operator knows about the cluster: kopf indices plus its own recent writes.

Kopf's indices follow the watch streams, which lag behind the operator's own writes by a
few milliseconds. Deciding on a view that misses our own last status patch or pod create
would repeat actions (a second restart for one failure). So every write's response is
kept as an *overlay* until the watch stream catches up with it (same or newer
resourceVersion, compared as the integers etcd makes them; equality when they are not).

Kopf's indices also miss deletions: after a watch re-list (410 Gone, an API server
restart) kopf re-adds every listed object but never removes the ones the list lacks, so
an object deleted during the gap stays indexed forever (a deleted pod looks Running).
:mod:`kubetune_operator.resync` lists the objects itself and *tombstones* each indexed
entry the list lacks: ``(namespace, name, uid)`` plus the list's resourceVersion. A
tombstoned entry is hidden from every read while its resourceVersion is not newer than
the list's; a re-created object (new uid, or a newer resourceVersion) shows. Kopf keys
its stores by uid, so a stale entry may linger next to its re-created successor: a
tombstone is therefore dropped only when no entry it hides is left in the index
(:meth:`Snapshot.prune`), which bounds them by the number of stale entries.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from kubetune_operator.observed import NodeView, PodView
from kubetune_operator.queueing import FlavorView, WorkloadView

JobKey = tuple[str, str]
OVERLAY_TTL_SECONDS = 120.0

V = TypeVar("V")


def newer_or_same(candidate: str, reference: str) -> bool:
    """Is resourceVersion ``candidate`` at least ``reference``?"""
    if candidate == reference:
        return True
    try:
        return int(candidate) >= int(reference)
    except ValueError:
        return False


def _rv(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("resourceVersion", ""))


class _Overlay(Generic[V]):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._items: dict[Any, tuple[str, V, float]] = {}
        self._clock = clock

    def put(self, key: Any, rv: str, value: V) -> None:
        self._items[key] = (rv, value, self._clock())

    def drop(self, key: Any) -> None:
        self._items.pop(key, None)

    def resolve(self, key: Any, indexed_rv: str | None) -> V | None:
        """The overlay value while it is newer than the indexed one, else None (dropped)."""
        item = self._items.get(key)
        if item is None:
            return None
        rv, value, born = item
        expired = self._clock() - born > OVERLAY_TTL_SECONDS
        if expired or (indexed_rv is not None and newer_or_same(indexed_rv, rv)):
            del self._items[key]
            return None
        return value

    def keys(self) -> list[Any]:
        return list(self._items)

    def peek(self, key: Any) -> V | None:
        """The value held for ``key`` (expired or not), without resolving it."""
        item = self._items.get(key)
        return item[1] if item is not None else None

    def items(self) -> list[tuple[Any, V]]:
        return [(key, item[1]) for key, item in self._items.items()]


class Snapshot:
    """Read access to the kopf indices (bound once the first handler hands them over)."""

    def __init__(self) -> None:
        self.jobs: Mapping[JobKey, Iterable[dict[str, Any]]] = {}
        self.pods: Mapping[JobKey, Iterable[PodView]] = {}
        self.nodes: Mapping[str, Iterable[NodeView]] | None = None
        # Kueue (only indexed when its API is served): the jobs' Workloads, the flavors.
        self.workloads: Mapping[JobKey, Iterable[WorkloadView]] = {}
        self.flavors: Mapping[str, Iterable[FlavorView]] = {}
        self._workload_overlay: _Overlay[WorkloadView] = _Overlay()
        self._job_overlay: _Overlay[dict[str, Any]] = _Overlay()
        self._pod_overlay: _Overlay[PodView] = _Overlay()
        # (namespace, name, uid or "" for any uid) -> the list resourceVersion it was absent from
        self._pod_tombs: dict[tuple[str, str, str], str] = {}
        self._job_tombs: dict[tuple[str, str, str], str] = {}

    # -- tombstones ------------------------------------------------------------------------------
    @staticmethod
    def _tomb(
        tombs: dict[tuple[str, str, str], str], namespace: str, name: str, uid: str, rv: str
    ) -> bool:
        """Is the entry (namespace, name, uid, rv) hidden by a tombstone in ``tombs``?"""
        for tkey in ((namespace, name, uid), (namespace, name, "")):
            list_rv = tombs.get(tkey)
            if list_rv is not None and newer_or_same(list_rv, rv):
                return True
        return False

    def job_hidden(self, key: JobKey, body: Mapping[str, Any]) -> bool:
        """Is this indexed job entry tombstoned (deleted during a watch gap)?"""
        if not self._job_tombs:
            return False
        uid = str((body.get("metadata") or {}).get("uid") or "")
        return self._tomb(self._job_tombs, key[0], key[1], uid, _rv(body))

    def pod_hidden(self, namespace: str, pod: PodView) -> bool:
        """Is this indexed pod entry tombstoned (deleted during a watch gap)?"""
        if not self._pod_tombs:
            return False
        return self._tomb(self._pod_tombs, namespace, pod.name, pod.uid, pod.resource_version)

    def vanished_pod(
        self, namespace: str, name: str, list_rv: str, *, uid: str | None = None
    ) -> None:
        """A list at ``list_rv`` lacked this pod (only the one with ``uid`` when given): hide
        the indexed entries not newer than the list, and drop our own writes about it."""
        self._pod_tombs[(namespace, name, uid or "")] = list_rv
        item = self._pod_overlay.peek((namespace, name))
        same = item is not None and (not uid or item.uid == uid)
        if item is not None and same and newer_or_same(list_rv, item.resource_version):
            self._pod_overlay.drop((namespace, name))

    def vanished_job(self, key: JobKey, list_rv: str, *, uid: str | None = None) -> None:
        """A list at ``list_rv`` lacked this job (only the one with ``uid`` when given)."""
        self._job_tombs[(key[0], key[1], uid or "")] = list_rv
        body = self._job_overlay.peek(key)
        if body is not None and newer_or_same(list_rv, _rv(body)):
            self._job_overlay.drop(key)

    def prune(self) -> None:
        """Drop the tombstones that hide nothing any more (their entries left the index)."""
        if self._pod_tombs:
            live = set()
            for (namespace, _job), store in self.pods.items():
                for pod in store:
                    for tkey in ((namespace, pod.name, pod.uid), (namespace, pod.name, "")):
                        list_rv = self._pod_tombs.get(tkey)
                        if list_rv is not None and newer_or_same(list_rv, pod.resource_version):
                            live.add(tkey)
            self._pod_tombs = {k: v for k, v in self._pod_tombs.items() if k in live}
        if self._job_tombs:
            live = set()
            for key, jstore in self.jobs.items():
                for body in jstore:
                    uid = str((body.get("metadata") or {}).get("uid") or "")
                    for tkey in ((key[0], key[1], uid), (key[0], key[1], "")):
                        list_rv = self._job_tombs.get(tkey)
                        if list_rv is not None and newer_or_same(list_rv, _rv(body)):
                            live.add(tkey)
            self._job_tombs = {k: v for k, v in self._job_tombs.items() if k in live}

    def tombstones(self) -> tuple[int, int]:
        """How many (pod, job) tombstones are held (for metrics and tests)."""
        return len(self._pod_tombs), len(self._job_tombs)

    def indexed_pods(self) -> Iterator[tuple[JobKey, PodView]]:
        """Every pod the index or our own writes know of, hidden or not (for resync)."""
        for key, store in list(self.pods.items()):
            for pod in store:
                yield key, pod
        for (namespace, _name), pod in self._pod_overlay.items():
            yield (namespace, pod.job), pod

    def indexed_jobs(self) -> Iterator[tuple[JobKey, dict[str, Any]]]:
        """Every job entry of the index, hidden or not (for resync)."""
        for key, store in list(self.jobs.items()):
            for body in store:
                yield key, body

    # -- jobs ------------------------------------------------------------------------------------
    def job(self, key: JobKey) -> dict[str, Any] | None:
        indexed = next((b for b in self.jobs.get(key, ()) if not self.job_hidden(key, b)), None)
        overlay = self._job_overlay.resolve(key, _rv(indexed) if indexed else None)
        if overlay is not None and indexed is not None:
            return overlay
        return indexed

    def wrote_job(self, key: JobKey, body: dict[str, Any]) -> None:
        self._job_overlay.put(key, _rv(body), body)

    def job_deleted(self, key: JobKey) -> None:
        self._job_overlay.drop(key)

    def job_keys(self) -> list[JobKey]:
        if not self._job_tombs:
            return list(self.jobs.keys())
        return [
            key
            for key, store in list(self.jobs.items())
            if any(not self.job_hidden(key, body) for body in store)
        ]

    def iter_jobs(self) -> Iterator[tuple[JobKey, dict[str, Any]]]:
        for key in self.job_keys():
            body = self.job(key)
            if body is not None:
                yield key, body

    # -- pods ------------------------------------------------------------------------------------
    def pods_of(self, key: JobKey) -> tuple[PodView, ...]:
        namespace = key[0]
        merged: dict[str, PodView] = {
            p.name: p for p in self.pods.get(key, ()) if not self.pod_hidden(namespace, p)
        }
        for okey in self._pod_overlay.keys():  # noqa: SIM118 (not a dict)
            ns, name = okey
            if ns != namespace:
                continue
            indexed = merged.get(name)
            view = self._pod_overlay.resolve(okey, indexed.resource_version if indexed else None)
            if view is not None and view.job == key[1]:
                merged[name] = view
        return tuple(merged[n] for n in sorted(merged))

    def other_pods(self, key: JobKey) -> list[PodView]:
        """The pods of every job but ``key`` (what holds the capacity a gang asks for), in
        one pass over the index and the overlay (``pods_of`` per job would scan the
        overlay once per job: quadratic in a burst of new gangs)."""
        merged: dict[tuple[str, str], PodView] = {}
        for other, store in list(self.pods.items()):
            if other == key:
                continue
            for pod in store:
                if not self.pod_hidden(other[0], pod):
                    merged[(other[0], pod.name)] = pod
        for okey, view in self._pod_overlay.items():
            if (okey[0], view.job) == key:
                continue
            indexed = merged.get(okey)
            resolved = self._pod_overlay.resolve(
                okey, indexed.resource_version if indexed else None
            )
            if resolved is not None:
                merged[okey] = resolved
        return list(merged.values())

    def wrote_pod(self, namespace: str, body: Mapping[str, Any]) -> None:
        view = PodView.from_body(body)
        self._pod_overlay.put((namespace, view.name), view.resource_version, view)

    def pod_deleted(self, namespace: str, name: str) -> None:
        """A DELETED watch event: whatever we wrote about the pod is moot."""
        self._pod_overlay.drop((namespace, name))

    # -- Kueue -----------------------------------------------------------------------------------
    def workloads_of(self, key: JobKey) -> tuple[WorkloadView, ...]:
        """The job's Workloads, with our own recent creates (the watch may lag behind them:
        without them a second reconcile would create the Workload again)."""
        merged = {w.name: w for w in self.workloads.get(key, ())}
        for okey, view in self._workload_overlay.items():
            if okey[:2] != key:
                continue
            indexed = merged.get(view.name)
            resolved = self._workload_overlay.resolve(
                okey, indexed.resource_version if indexed else None
            )
            if resolved is not None:
                merged[view.name] = resolved
        return tuple(merged[n] for n in sorted(merged))

    def wrote_workload(self, key: JobKey, body: Mapping[str, Any]) -> None:
        view = WorkloadView.from_body(body)
        self._workload_overlay.put((*key, view.name), view.resource_version, view)

    def workload_deleted(self, key: JobKey, name: str) -> None:
        self._workload_overlay.drop((*key, name))

    def flavor_map(self) -> dict[str, FlavorView]:
        out: dict[str, FlavorView] = {}
        for name, store in self.flavors.items():
            view = next(iter(store), None)
            if view is not None:
                out[name] = view
        return out

    # -- nodes -----------------------------------------------------------------------------------
    def node_map(self) -> dict[str, NodeView] | None:
        if self.nodes is None:
            return None
        out: dict[str, NodeView] = {}
        for name, store in self.nodes.items():
            view = next(iter(store), None)
            if view is not None:
                out[name] = view
        # No node at all means "cannot see nodes" (RBAC, a broken watch), not "every node
        # is gone": without this, one bad watch would restart every gang as NodeLost.
        return out or None

    def jobs_on_node(self, node: str) -> set[JobKey]:
        return {
            key
            for key, store in self.pods.items()
            for pod in store
            if pod.node_name == node and not self.pod_hidden(key[0], pod)
        }
