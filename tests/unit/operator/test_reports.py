"""The validation-report cache is bounded by bytes (issue 9, item 11): one entry per job,
a newer version replaces the older one, least recently used out first."""

from __future__ import annotations

import json

from kubetune_operator.reports import ENTRY_OVERHEAD, ReportCache, job_version, spec_digest

from .conftest import job_manifest


def test_hit_only_for_the_same_version() -> None:
    cache: ReportCache[str] = ReportCache()
    cache.put("u", 1, "d1", "report-1", 100)
    assert cache.get("u", 1, "d1") == "report-1"
    assert cache.get("u", 2, "d1") is None, "another generation"
    assert cache.get("u", 1, "d2") is None, "another spec"
    assert cache.get("v", 1, "d1") is None, "another job"


def test_a_newer_version_replaces_the_older() -> None:
    cache: ReportCache[str] = ReportCache()
    cache.put("u", 1, "d1", "old", 1000)
    cache.put("u", 2, "d2", "new", 500)
    assert len(cache) == 1
    assert cache.get("u", 1, "d1") is None
    assert cache.get("u", 2, "d2") == "new"
    assert cache.bytes == 500 + ENTRY_OVERHEAD, "the old entry's bytes were released"


def test_bounded_by_bytes_least_recently_used_first() -> None:
    mib = 1024 * 1024
    cache: ReportCache[str] = ReportCache(max_bytes=3 * mib)
    for uid in ("a", "b", "c"):
        cache.put(uid, 1, "d", uid, mib - ENTRY_OVERHEAD)
    assert len(cache) == 3 and cache.bytes == 3 * mib
    assert cache.get("a", 1, "d") == "a"  # a is now the most recently used
    cache.put("d", 1, "d", "d", mib - ENTRY_OVERHEAD)
    assert cache.get("b", 1, "d") is None, "b was the least recently used"
    assert [cache.get(u, 1, "d") for u in ("a", "c", "d")] == ["a", "c", "d"]
    # One big spec pushes out as many small ones as it needs.
    cache.put("big", 1, "d", "big", 2 * mib)
    assert cache.bytes <= 3 * mib
    assert cache.get("big", 1, "d") == "big"
    assert len(cache) == 1
    # Many small specs: the count grows as far as the bytes allow.
    small: ReportCache[int] = ReportCache(max_bytes=100 * (ENTRY_OVERHEAD + 100))
    for i in range(1000):
        small.put(f"j{i}", 1, "d", i, 100)
    assert len(small) == 100
    assert small.get("j999", 1, "d") == 999 and small.get("j899", 1, "d") is None


def test_a_report_larger_than_the_budget_is_not_kept() -> None:
    cache: ReportCache[str] = ReportCache(max_bytes=10_000)
    cache.put("small", 1, "d", "s", 100)
    cache.put("huge", 1, "d", "h", 20_000)
    assert cache.get("huge", 1, "d") is None
    assert cache.get("small", 1, "d") == "s", "a too-large entry evicts nothing"
    assert cache.bytes == 100 + ENTRY_OVERHEAD


def test_forget() -> None:
    cache: ReportCache[str] = ReportCache()
    cache.put("u", 1, "d", "r", 10)
    cache.forget("u")
    cache.forget("never-seen")
    assert cache.get("u", 1, "d") is None
    assert len(cache) == 0 and cache.bytes == 0


def test_job_version_and_digest() -> None:
    raw = job_manifest()
    uid, generation, digest, size = job_version(raw)
    assert (uid, generation) == ("uid-tune", 1)
    assert size == len(json.dumps(raw["spec"], sort_keys=True, separators=(",", ":")))
    reordered = dict(reversed(list(raw["spec"].items())))
    assert spec_digest(reordered) == (digest, size), "key order does not matter"
    changed = job_manifest(hyperparameters={"learningRate": 1e-4})
    assert job_version(changed)[2] != digest
    assert job_version({"metadata": {"uid": "x"}, "spec": {}})[1] is None
