"""The Gateway API on the e2e cluster, for rollout tests (DESIGN.md, "Beyond training").

``gateway_api`` (session): the released Gateway API CRDs (standard channel of
``GATEWAY_API_VERSION``; HTTPRoute, Gateway, GatewayClass, ReferenceGrant, ...) installed on the
shared ``cluster`` with server-side apply, all Established when yielded. It yields the
:class:`kubetune.devcluster.gateway.GatewayAPI` that installed them (``version``, ``status()``).
Torn down at the end of the session: the CRDs, and with them every Gateway API object, are
deleted, so the shared cluster is as before.

There is no Gateway data plane: tests route through
:class:`kubetune.devcluster.router.WeightedRouter` (or ``RouterThread`` from synchronous code),
with local processes as backends behind selector-less Services and EndpointSlices
(``router.local_backend_manifests``; the API server refuses loopback endpoint addresses, so
backends listen on ``kueue.host_ipv4()``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kubetune.devcluster import DevClusterError
from kubetune.devcluster.gateway import GatewayAPI
from kubetune.devcluster.testing import Cluster


@pytest.fixture(scope="session")
def gateway_api(cluster: Cluster) -> Iterator[GatewayAPI]:
    gateway = GatewayAPI(cluster.dev)
    try:
        gateway.up(timeout=60)
    except (DevClusterError, OSError) as exc:
        gateway.down()
        pytest.fail(f"the Gateway API CRDs did not install: {exc}", pytrace=False)
    try:
        yield gateway
    finally:
        gateway.down()
        assert not gateway.established(), "Gateway API CRDs were left behind"
