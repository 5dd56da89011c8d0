"""The cache against a fresh LIST (issue 9 item 6): deletions a watch re-list never reports.

The indices here are kopf's own :class:`Index` (filled through its internal protocol, the
way kopf's indexer does): stores are keyed by ``(namespace, name, uid)``, so a pod deleted
and re-created under the same name during a watch gap sits next to its successor.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kopf._core.engines.indexing import Index

from kubetune_operator import naming, resync
from kubetune_operator.cache import Snapshot
from kubetune_operator.kube import ApiError, KubeClient
from kubetune_operator.observed import PodView
from kubetune_operator.resync import ResyncStats

JOBS = f"/apis/{naming.GROUP}/{naming.VERSION}"


def pod_body(ns: str, name: str, job: str, uid: str, rv: str, node: str = "n1") -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": ns,
            "name": name,
            "uid": uid,
            "resourceVersion": rv,
            "labels": {naming.LABEL_JOB: job, naming.LABEL_ROLE: naming.ROLE_WORKER},
        },
        "spec": {"nodeName": node},
        "status": {"phase": "Running"},
    }


def job_body(ns: str, name: str, uid: str, rv: str) -> dict[str, Any]:
    meta = {"namespace": ns, "name": name, "uid": uid, "resourceVersion": rv}
    return {"metadata": meta, "spec": {}, "status": {"phase": "Running"}}


class FakeApi:
    """Objects by kind; LISTs paginated with continue tokens, at the current resourceVersion."""

    def __init__(self) -> None:
        self.rv = 100
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[str] = []
        self.expire_next_continue = False
        self._tokens = itertools.count(1)
        self._pages: dict[str, tuple[str, list[dict[str, Any]]]] = {}

    path = staticmethod(KubeClient.path)

    def bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    async def get(self, path: str) -> dict[str, Any]:
        self.requests.append(path)
        url = urlsplit(path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        limit = int(query["limit"])
        token = query.get("continue")
        if token:
            if self.expire_next_continue:
                self.expire_next_continue = False
                raise ApiError(410, "Expired", "continue token expired")
            rv, rest = self._pages.pop(token)
        else:
            parts = url.path.strip("/").split("/")
            ns = parts[parts.index("namespaces") + 1] if "namespaces" in parts else None
            if parts[-1] == "pods":
                assert query.get("labelSelector") == naming.LABEL_JOB
                store = self.pods
            else:
                assert url.path.startswith(JOBS) and parts[-1] == naming.PLURAL
                store = self.jobs
            rv = str(self.rv)
            rest = [b for (bns, _), b in sorted(store.items()) if ns is None or bns == ns]
        page, rest = rest[:limit], rest[limit:]
        meta: dict[str, Any] = {"resourceVersion": rv}
        if rest:
            meta["continue"] = token = f"t{next(self._tokens)}"
            self._pages[token] = (rv, rest)
        return {"metadata": meta, "items": page}


def acckey(ns: str, name: str, uid: str) -> Any:
    """Kopf's store key for one object."""
    return (ns, name, uid)


class Cluster:
    """The fake API server plus kopf indices that follow it until the watch is cut."""

    def __init__(self) -> None:
        self.api = FakeApi()
        self.pod_index: Index[Any, PodView] = Index()
        self.job_index: Index[Any, dict[str, Any]] = Index()
        self.cache = Snapshot()
        self.cache.pods = self.pod_index
        self.cache.jobs = self.job_index
        self.watching = True

    def add_job(self, ns: str, name: str, uid: str) -> dict[str, Any]:
        body = job_body(ns, name, uid, self.api.bump())
        self.api.jobs[(ns, name)] = body
        if self.watching:
            self.job_index._replace(acckey(ns, name, uid), {(ns, name): body})
        return body

    def add_pod(self, ns: str, name: str, job: str, uid: str, node: str = "n1") -> None:
        body = pod_body(ns, name, job, uid, self.api.bump(), node)
        self.api.pods[(ns, name)] = body
        if self.watching:
            self.pod_index._replace(acckey(ns, name, uid), {(ns, job): PodView.from_body(body)})

    def delete_pod(self, ns: str, name: str) -> None:
        body = self.api.pods.pop((ns, name))
        self.api.bump()
        if self.watching:
            self.pod_index._discard(acckey(ns, name, body["metadata"]["uid"]))

    def delete_job(self, ns: str, name: str) -> None:
        body = self.api.jobs.pop((ns, name))
        self.api.bump()
        if self.watching:
            self.job_index._discard(acckey(ns, name, body["metadata"]["uid"]))

    def relist(self) -> None:
        """Kopf after 410 Gone: every listed object re-indexed, nothing removed."""
        self.watching = True
        for (ns, _), body in self.api.pods.items():
            view = PodView.from_body(body)
            self.pod_index._replace(acckey(ns, view.name, view.uid), {(ns, view.job): view})
        for (ns, name), body in self.api.jobs.items():
            self.job_index._replace(acckey(ns, name, body["metadata"]["uid"]), {(ns, name): body})

    def resync(self, namespaces: tuple[str, ...] = (), stats: ResyncStats | None = None) -> Any:
        return asyncio.run(resync.resync(self.api, self.cache, namespaces, stats))  # type: ignore[arg-type]

    def pod_names(self, ns: str, job: str) -> list[tuple[str, str]]:
        return [(p.name, p.uid) for p in self.cache.pods_of((ns, job))]


@pytest.fixture
def cluster() -> Cluster:
    c = Cluster()
    c.add_job("team", "tune", "j1")
    c.add_pod("team", "tune-a0-0", "tune", "p0", node="n1")
    c.add_pod("team", "tune-a0-1", "tune", "p1", node="n2")
    return c


def test_pod_deleted_during_watch_gap_is_hidden_after_resync(cluster: Cluster) -> None:
    cluster.watching = False  # 410 Gone: the DELETED event is lost
    cluster.delete_pod("team", "tune-a0-1")
    cluster.relist()
    assert ("tune-a0-1", "p1") in cluster.pod_names("team", "tune"), "the stale entry (bug)"
    stats = ResyncStats()
    assert cluster.resync(stats=stats) == {("team", "tune")}
    assert cluster.pod_names("team", "tune") == [("tune-a0-0", "p0")]
    assert cluster.cache.jobs_on_node("n2") == set()
    assert cluster.cache.jobs_on_node("n1") == {("team", "tune")}
    assert (stats.pods_listed, stats.pods_vanished, stats.jobs_vanished) == (1, 1, 0)
    assert cluster.resync() == set(), "already hidden: not reported again"


def test_pod_created_after_the_list_is_not_hidden(cluster: Cluster) -> None:
    class LateApi(FakeApi):
        async def get(self, path: str) -> dict[str, Any]:
            page = await super().get(path)
            if path.startswith("/api/v1/pods"):  # created between the LIST and the compare
                cluster.add_pod("team", "tune-a0-2", "tune", "p2")
            return page

    late = LateApi()
    late.__dict__.update(cluster.api.__dict__)
    cluster.api = late
    assert cluster.resync() == set()
    assert ("tune-a0-2", "p2") in cluster.pod_names("team", "tune")
    assert cluster.cache.tombstones() == (0, 0)


def test_pod_recreated_with_same_name(cluster: Cluster) -> None:
    cluster.watching = False
    cluster.delete_pod("team", "tune-a0-1")
    cluster.add_pod("team", "tune-a0-1", "tune", "p1-new", node="n3")  # during the gap
    cluster.relist()
    assert cluster.resync() == {("team", "tune")}
    assert cluster.pod_names("team", "tune") == [("tune-a0-0", "p0"), ("tune-a0-1", "p1-new")]
    assert cluster.cache.jobs_on_node("n2") == set(), "the old pod's node"
    assert cluster.cache.jobs_on_node("n3") == {("team", "tune")}
    # Re-created again after the resync (watch working): newer, so it shows.
    cluster.delete_pod("team", "tune-a0-1")
    cluster.add_pod("team", "tune-a0-1", "tune", "p1-newer", node="n4")
    assert cluster.pod_names("team", "tune") == [("tune-a0-0", "p0"), ("tune-a0-1", "p1-newer")]


def test_name_tombstone_hides_only_what_the_list_predates(cluster: Cluster) -> None:
    cache = cluster.cache
    cache.vanished_pod("team", "tune-a0-1", str(cluster.api.rv))  # any uid
    assert cluster.pod_names("team", "tune") == [("tune-a0-0", "p0")]
    cluster.delete_pod("team", "tune-a0-1")
    cluster.add_pod("team", "tune-a0-1", "tune", "p1-new")  # newer resourceVersion
    assert ("tune-a0-1", "p1-new") in cluster.pod_names("team", "tune")


def test_job_deleted_during_watch_gap_disappears(cluster: Cluster) -> None:
    cluster.add_job("team", "other", "j2")
    cluster.add_job("ml", "again", "j3")
    cluster.watching = False
    cluster.delete_job("team", "tune")
    cluster.delete_job("ml", "again")
    cluster.add_job("ml", "again", "j3-new")  # deleted and re-created during the gap
    cluster.relist()
    assert cluster.resync() == {("team", "tune"), ("ml", "again")}
    cache = cluster.cache
    assert cache.job(("team", "tune")) is None
    assert sorted(k for k, _ in cache.iter_jobs()) == [("ml", "again"), ("team", "other")]
    assert sorted(cache.job_keys()) == [("ml", "again"), ("team", "other")]
    assert cache.job(("ml", "again"))["metadata"]["uid"] == "j3-new"  # type: ignore[index]


def test_our_own_write_about_a_deleted_pod_is_dropped(cluster: Cluster) -> None:
    cluster.watching = False
    cluster.add_pod("team", "tune-a0-2", "tune", "p2")  # created by us, never watched
    cluster.cache.wrote_pod("team", cluster.api.pods[("team", "tune-a0-2")])
    cluster.delete_pod("team", "tune-a0-2")
    assert ("tune-a0-2", "p2") in cluster.pod_names("team", "tune")
    assert cluster.resync() == {("team", "tune")}
    assert ("tune-a0-2", "p2") not in cluster.pod_names("team", "tune")


def test_paginated_lists(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resync, "PAGE_SIZE", 2)
    for i in range(2, 7):
        cluster.add_pod("team", f"tune-a0-{i}", "tune", f"p{i}")
    cluster.watching = False
    cluster.delete_pod("team", "tune-a0-3")
    cluster.relist()
    stats = ResyncStats()
    assert cluster.resync(stats=stats) == {("team", "tune")}
    names = [n for n, _ in cluster.pod_names("team", "tune")]
    assert names == [f"tune-a0-{i}" for i in (0, 1, 2, 4, 5, 6)], "later pages count as listed"
    assert stats.pods_listed == 6 and stats.pods_vanished == 1
    pod_requests = [r for r in cluster.api.requests if r.startswith("/api/v1/pods")]
    assert len(pod_requests) == 3
    assert all("limit=2" in r for r in pod_requests)
    assert all("continue=" in r for r in pod_requests[1:])


def test_expired_continue_token_lists_again(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resync, "PAGE_SIZE", 1)
    cluster.watching = False
    cluster.delete_pod("team", "tune-a0-0")
    cluster.relist()
    cluster.api.expire_next_continue = True
    assert cluster.resync() == {("team", "tune")}
    assert cluster.pod_names("team", "tune") == [("tune-a0-1", "p1")]


def test_namespaced_resync(cluster: Cluster) -> None:
    cluster.add_job("ml", "x", "jx")
    cluster.add_pod("ml", "x-a0-0", "x", "px")
    cluster.watching = False
    cluster.delete_pod("ml", "x-a0-0")
    cluster.delete_pod("team", "tune-a0-0")
    cluster.relist()
    assert cluster.resync(("ml",)) == {("ml", "x")}
    assert cluster.pod_names("ml", "x") == []
    assert ("tune-a0-0", "p0") in cluster.pod_names("team", "tune"), "namespace not resynced"
    assert all("/namespaces/ml/" in r for r in cluster.api.requests)


def test_tombstones_pruned_when_the_entry_leaves_the_index(cluster: Cluster) -> None:
    cluster.watching = False
    cluster.delete_pod("team", "tune-a0-1")
    cluster.delete_job("team", "tune")
    cluster.relist()
    cluster.resync()
    assert cluster.cache.tombstones() == (1, 1)
    cluster.cache.prune()
    assert cluster.cache.tombstones() == (1, 1), "still hiding stale entries"
    cluster.pod_index._discard(acckey("team", "tune-a0-1", "p1"))  # e.g. a late DELETED event
    cluster.job_index._discard(acckey("team", "tune", "j1"))
    cluster.resync()  # prunes first
    assert cluster.cache.tombstones() == (0, 0)


def test_the_controller_requeues_touched_jobs_and_forgets_deleted_ones(cluster: Cluster) -> None:
    from datetime import UTC, datetime

    from kubetune_operator.controller import Controller
    from kubetune_operator.metrics import OperatorMetrics
    from kubetune_operator.observed import ProgressSample
    from kubetune_operator.settings import OperatorSettings

    cluster.add_job("team", "gone", "j2")
    controller = Controller(
        cluster.api,  # type: ignore[arg-type]
        OperatorSettings(leader_election=False, identity="t"),
        OperatorMetrics(),
    )
    controller.cache = cluster.cache
    controller._progress[("team", "gone")] = ProgressSample({}, datetime.now(UTC))
    cluster.watching = False
    cluster.delete_pod("team", "tune-a0-1")
    cluster.delete_job("team", "gone")
    cluster.relist()
    asyncio.run(controller.resync_once())
    assert ("team", "tune") in controller.queue._dirty
    assert ("team", "gone") not in controller._progress, "a deleted job's memory is dropped"
    assert [k for k, _ in controller.cache.iter_jobs()] == [("team", "tune")]
