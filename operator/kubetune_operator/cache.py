"""What the operator knows about the cluster: kopf indices plus its own recent writes.

Kopf's indices follow the watch streams, which lag behind the operator's own writes by a
few milliseconds. Deciding on a view that misses our own last status patch or pod create
would repeat actions (a second restart for one failure). So every write's response is
kept as an *overlay* until the watch stream catches up with it (same or newer
resourceVersion, compared as the integers etcd makes them; equality when they are not).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from kubetune_operator.observed import NodeView, PodView

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


class Snapshot:
    """Read access to the kopf indices (bound once the first handler hands them over)."""

    def __init__(self) -> None:
        self.jobs: Mapping[JobKey, Iterable[dict[str, Any]]] = {}
        self.pods: Mapping[JobKey, Iterable[PodView]] = {}
        self.nodes: Mapping[str, Iterable[NodeView]] | None = None
        self._job_overlay: _Overlay[dict[str, Any]] = _Overlay()
        self._pod_overlay: _Overlay[PodView] = _Overlay()
        self._gone: set[tuple[str, str]] = set()

    # -- jobs ------------------------------------------------------------------------------------
    def job(self, key: JobKey) -> dict[str, Any] | None:
        indexed = next(iter(self.jobs.get(key, ())), None)
        overlay = self._job_overlay.resolve(key, _rv(indexed) if indexed else None)
        if overlay is not None and indexed is not None:
            return overlay
        return indexed

    def wrote_job(self, key: JobKey, body: dict[str, Any]) -> None:
        self._job_overlay.put(key, _rv(body), body)

    def job_deleted(self, key: JobKey) -> None:
        self._job_overlay.drop(key)

    def job_keys(self) -> list[JobKey]:
        return list(self.jobs.keys())

    def iter_jobs(self) -> Iterator[tuple[JobKey, dict[str, Any]]]:
        for key in self.job_keys():
            body = self.job(key)
            if body is not None:
                yield key, body

    # -- pods ------------------------------------------------------------------------------------
    def pods_of(self, key: JobKey) -> tuple[PodView, ...]:
        namespace = key[0]
        merged: dict[str, PodView] = {p.name: p for p in self.pods.get(key, ())}
        for okey in self._pod_overlay.keys():  # noqa: SIM118 (not a dict)
            ns, name = okey
            if ns != namespace:
                continue
            indexed = merged.get(name)
            view = self._pod_overlay.resolve(okey, indexed.resource_version if indexed else None)
            if view is not None and view.job == key[1]:
                merged[name] = view
        return tuple(merged[n] for n in sorted(merged))

    def wrote_pod(self, namespace: str, body: Mapping[str, Any]) -> None:
        view = PodView.from_body(body)
        self._pod_overlay.put((namespace, view.name), view.resource_version, view)

    def pod_deleted(self, namespace: str, name: str) -> None:
        """A DELETED watch event: whatever we wrote about the pod is moot."""
        self._pod_overlay.drop((namespace, name))

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
        return {key for key, store in self.pods.items() for pod in store if pod.node_name == node}
