"""Fixtures of the observability tests (a real Prometheus; see prometheus_helpers.py).

* ``start_prometheus`` (function): a factory, ``start_prometheus(**kwargs) -> Prometheus``
  (the keywords of :func:`prometheus_helpers.start`), each in its own temporary directory,
  all stopped after the test.
* ``prometheus`` (function): one started with defaults (1s scrapes, local runs only).
* ``cluster``, ``namespace`` (tests/e2e/conftest.py): the dev cluster, for tests that scrape
  the operator and trainer pods; a test using them is marked ``e2e``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import cluster, namespace  # noqa: F401  (re-exported fixtures)
from tests.observability.prometheus_helpers import Prometheus, start

CLUSTER_FIXTURES = {"cluster", "namespace"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents and CLUSTER_FIXTURES & set(
            getattr(item, "fixturenames", ())
        ):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def start_prometheus(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., Prometheus]]:
    started: list[Prometheus] = []

    def factory(**kwargs: Any) -> Prometheus:
        prom = start(tmp_path_factory.mktemp("prometheus"), **kwargs)
        started.append(prom)
        return prom

    yield factory
    for prom in started:
        prom.stop()


@pytest.fixture
def prometheus(start_prometheus: Callable[..., Prometheus]) -> Prometheus:
    return start_prometheus()
