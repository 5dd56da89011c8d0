"""A real Prometheus for tests: start one, query it, wait for series; the promtool path.

The binaries are the dev tooling's (component ``prometheus`` of
src/kubetune/devcluster/data/versions.env, built from source and cached like the cluster's).
Typical use, with the fixtures of tests/observability/conftest.py::

    def test_something(start_prometheus):
        prom = start_prometheus(operator_targets=["127.0.0.1:8080"])   # scrapes every 1s
        prom.wait_for('up{job="kubetune-operator"} == 1', timeout=30)
        [sample] = prom.query("kubetune_operator_leader")
        series = prom.query_range("kubetune_jobs", start, end, step=1)

and, outside Prometheus, ``subprocess.run([promtool(), "test", "rules", "tests.yaml"])``.

API (kept small on purpose):

* :func:`promtool`, :func:`prometheus_binary` -> ``Path`` (built on first use when a Go
  toolchain is there; the test is skipped otherwise, and fails with CI=true).
* :func:`start` -> :class:`Prometheus`: a server on a free port in a directory, ready
  (``/-/ready``). The ``start_prometheus`` fixture wraps it and stops every server it started.
* :class:`Prometheus`: ``query(expr, time=None)``, ``query_range(expr, start, end, step)``,
  ``wait_for(expr, timeout)``, ``value(expr)``, ``targets(job=None)``, ``rules()``,
  ``reconfigure(**settings)``, ``stop()``; ``url``, ``file_sd_dir`` (where
  ``kubetune run --local --prometheus-file-sd-dir`` registers a run).

Query results are the HTTP API's ``data.result`` lists: instant vector samples are
``{"metric": {labels}, "value": [ts, "str"]}``, range series
``{"metric": {labels}, "values": [[ts, "str"], ...]}``.
A bad expression raises :class:`~kubetune.devcluster.prometheus.PromQLError`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from kubetune.devcluster.build import build, find_go
from kubetune.devcluster.prometheus import (
    PrometheusAPI,
    PrometheusServer,
    PromQLError,
    ScrapeSettings,
)
from kubetune.devcluster.versions import Binaries, DevClusterError

__all__ = [
    "PromQLError",
    "Prometheus",
    "prometheus_binary",
    "promtool",
    "start",
]

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
#: tests scrape and evaluate rules this often (the dev tooling's default is 15s)
TEST_SCRAPE_INTERVAL = "1s"


@functools.cache
def _binaries() -> Binaries:
    binaries = Binaries.default()
    if "prometheus" not in binaries.missing():
        return binaries
    if find_go() is None:
        reason = (
            "prometheus is not built and no Go toolchain is installed to build it "
            "(install Go, then run `kubetune dev cluster build prometheus`)"
        )
        if IN_CI:
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    try:
        return build(["prometheus"])
    except DevClusterError as exc:
        pytest.fail(f"building prometheus failed: {exc}", pytrace=False)


def prometheus_binary() -> Path:
    """The cached ``prometheus`` binary (built first if needed)."""
    return _binaries().path("prometheus")


def promtool() -> Path:
    """The cached ``promtool`` binary (built first if needed): ``check rules``, ``test rules``."""
    return _binaries().path("promtool")


@dataclasses.dataclass
class Prometheus:
    """A running test Prometheus: the server process and its HTTP API."""

    server: PrometheusServer
    settings: ScrapeSettings
    url: str

    @property
    def api(self) -> PrometheusAPI:
        return PrometheusAPI(self.url)

    @property
    def file_sd_dir(self) -> Path:
        return self.server.file_sd_dir

    def query(self, expr: str, time: float | None = None) -> list[dict[str, Any]]:
        """Instant query at ``time`` (unix seconds; default now) -> the result list."""
        return self.api.query(expr, time)

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """Range query over [start, end] every ``step`` seconds -> the series list."""
        return self.api.query_range(expr, start, end, step)

    def value(self, expr: str, time: float | None = None) -> float:
        """The value of an expression that returns exactly one sample (or a scalar)."""
        data = self.api.query_data(expr, time)
        if data["resultType"] == "scalar":
            return float(data["result"][1])
        result = data["result"]
        assert len(result) == 1, f"{expr}: expected one sample, got {result}"
        return float(result[0]["value"][1])

    def wait_for(
        self, expr: str, timeout: float = 60.0, interval: float = 0.5
    ) -> list[dict[str, Any]]:
        """Poll until ``expr`` returns a non-empty result and return it (so write the condition
        into the expression: ``x > 0``). A bad expression fails at once; on timeout the
        AssertionError shows the scrape targets and their last errors."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                targets = [
                    (t["labels"].get("job"), t["scrapeUrl"], t["health"], t.get("lastError"))
                    for t in self.targets()
                ]
                raise AssertionError(
                    f"no result for {expr!r} within {timeout}s; targets: {targets}\n"
                    f"prometheus log:\n{self.server.log_tail()}"
                )
            time.sleep(interval)

    def targets(self, job: str | None = None) -> list[dict[str, Any]]:
        """Active targets (``labels``, ``health``, ``lastError``...), of one ``job`` label."""
        found = self.api.targets()
        return [t for t in found if job is None or t["labels"].get("job") == job]

    def rules(self) -> list[dict[str, Any]]:
        """Loaded rule groups; each rule has ``health`` and ``lastError``."""
        return self.api.rules()

    def reconfigure(self, **changes: Any) -> None:
        """Change :class:`ScrapeSettings` fields (e.g. ``operator_targets``) and reload."""
        self.settings = dataclasses.replace(self.settings, **changes)
        self.server.write_config(self.settings)
        self.api.reload()

    def stop(self) -> None:
        assert self.server.down(), f"prometheus in {self.server.dir} did not stop"


def start(
    directory: Path,
    *,
    operator_targets: Sequence[str] = (),
    kubeconfig: Path | None = None,
    rule_files: Sequence[Path] = (),
    scrape_interval: str = TEST_SCRAPE_INTERVAL,
    evaluation_interval: str | None = None,
) -> Prometheus:
    """Start Prometheus in ``directory`` on a free port and wait until it is ready.

    It scrapes ``operator_targets`` (job ``kubetune-operator``), local runs registered in
    ``<directory>/file_sd`` and, given a ``kubeconfig``, the cluster's rank-0 trainer pods
    (job ``kubetune-trainer``); it evaluates ``rule_files``. Stop it with :meth:`Prometheus.stop`
    (it also dies with the test process).
    """
    server = PrometheusServer(directory, _binaries())
    settings = server.settings(
        operator_targets=tuple(operator_targets),
        kubeconfig=kubeconfig,
        rule_files=tuple(rule_files),
        scrape_interval=scrape_interval,
        evaluation_interval=evaluation_interval,
    )
    state = server.up(settings, die_with_parent=True, retention="1d")
    return Prometheus(server, settings, state.url)
