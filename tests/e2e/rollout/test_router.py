"""The weighted router against the real control plane: the released Gateway API CRDs accept an
HTTPRoute, and the router splits requests by its weights, following each change within a
second (what a canary rollout relies on)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
from aiohttp import web

from kubetune.devcluster.gateway import GROUP, GatewayAPI, dump_all
from kubetune.devcluster.kueue import host_ipv4
from kubetune.devcluster.procs import free_ports, port_in_use
from kubetune.devcluster.router import (
    BACKEND_HEADER,
    RouterThread,
    WeightedRouter,
    local_backend_manifests,
    weighted_route,
)
from kubetune.devcluster.testing import Cluster, wait_until

NAME = web.AppKey("name", str)
ROUTE = "chat"


async def echo(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"name": request.app[NAME], "path": request.path_qs})


async def serve_echo(name: str, host: str) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app[NAME] = name
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    return runner, int(runner.addresses[0][1])


@pytest.fixture
def routed(cluster: Cluster, gateway_api: GatewayAPI, namespace: str) -> Iterator[RouterThread]:
    """Two echo backends (base, canary) as Services + EndpointSlices, a router on the route."""
    host = host_ipv4()
    thread = RouterThread(
        lambda: WeightedRouter(namespace, ROUTE, kubeconfig=cluster.kubeconfig, poll_interval=5)
    )
    runners = []
    try:
        docs = []
        for name in ("base", "canary"):
            runner, port = thread.call(serve_echo(name, host))
            runners.append(runner)
            docs += local_backend_manifests(name, namespace, host, port)
        docs.append(weighted_route(ROUTE, namespace, {"base": 100, "canary": 0}))
        cluster.kubectl("apply", "-f", "-", input=dump_all(docs))
        thread.start()
        yield thread
    finally:
        for runner in runners:
            thread.call(runner.cleanup())
        thread.stop()


def split(http: urllib3.PoolManager, url: str, n: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for i in range(n):
        resp = http.request("GET", f"{url}/v1/chat/completions?i={i}")
        assert resp.status == 200, resp.data
        body = json.loads(resp.data)
        assert body["path"] == f"/v1/chat/completions?i={i}"
        assert resp.headers[BACKEND_HEADER].split("/")[1].startswith(body["name"])
        counts[body["name"]] += 1
    return counts


def set_weights(cluster: Cluster, namespace: str, base: int, canary: int) -> int:
    """Patch the weights (as a rollout controller does); the route's new generation."""
    patch = {"spec": weighted_route(ROUTE, namespace, {"base": base, "canary": canary})["spec"]}
    out = cluster.kubectl(
        "patch",
        f"httproutes.{GROUP}",
        ROUTE,
        "--type=merge",
        "-p",
        json.dumps(patch),
        "-o",
        "jsonpath={.metadata.generation}",
        namespace=namespace,
    )
    return int(out.stdout)


def applied_within(thread: RouterThread, generation: int) -> float:
    """Seconds until the router applies ``generation`` (fails past 1 s)."""
    assert thread.router is not None
    t0 = time.monotonic()
    thread.call(thread.router.wait_generation(generation, timeout=1.0))
    return time.monotonic() - t0


def test_gateway_api_crds_are_the_pinned_release(cluster: Cluster, gateway_api: GatewayAPI) -> None:
    st = gateway_api.status()
    assert st["ready"] and st["installed"] == [gateway_api.version]
    for plural in ("gatewayclasses", "gateways", "httproutes", "referencegrants"):
        assert st["crds"][f"{plural}.{GROUP}"] is True
    # the CRD's schema defaults and validates (weight in [0, 1000000])
    bad = weighted_route("bad", "default", {"x": -1})
    proc = cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=dump_all([bad]), check=False
    )
    assert proc.returncode != 0 and "weight" in proc.stderr


def test_split_follows_the_route(cluster: Cluster, namespace: str, routed: RouterThread) -> None:
    assert routed.router is not None
    url = routed.router.url
    http = urllib3.PoolManager()
    assert split(http, url, 50) == Counter({"base": 50})

    assert applied_within(routed, set_weights(cluster, namespace, 50, 50)) < 1.0
    counts = split(http, url, 400)
    assert 150 <= counts["base"] <= 250 and counts["base"] + counts["canary"] == 400, counts

    assert applied_within(routed, set_weights(cluster, namespace, 0, 100)) < 1.0
    assert split(http, url, 50) == Counter({"canary": 50})

    metrics = http.request("GET", routed.router.metrics_url + "/metrics").data.decode()
    route = f'route="{namespace}/{ROUTE}"'
    canary, base = f'backend="{namespace}/canary:80"', f'backend="{namespace}/base:80"'
    assert f'kubetune_router_requests_total{{{canary},code="200",{route}}}' in metrics
    assert f'kubetune_router_backend_weight{{{base},{route},rule="0"}} 0.0' in metrics


def test_cli(cluster: Cluster, gateway_api: GatewayAPI, namespace: str) -> None:
    """`kubetune dev gateway status` and `kubetune dev router` as a user runs them."""
    kubetune = str(Path(sys.executable).with_name("kubetune"))
    env = cluster.env()
    status = subprocess.run(
        [kubetune, "dev", "gateway", "status", "--state-dir", str(cluster.dev.state_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert status.returncode == 0 and gateway_api.version in status.stdout, status

    route = weighted_route(ROUTE, namespace, {"nowhere": 1})
    cluster.kubectl("apply", "-f", "-", input=dump_all([route]))
    port, metrics_port = free_ports(2)
    argv = [kubetune, "dev", "router", "-n", namespace, "--route", ROUTE]
    argv += ["--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics_port}"]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    try:
        http = urllib3.PoolManager(retries=False)
        wait_until(
            lambda: port_in_use(metrics_port) and port_in_use(port), timeout=30, what="router"
        )
        resp = http.request("GET", f"http://127.0.0.1:{port}/v1/models")
        assert resp.status == 500 and b"no such Service" in resp.data  # the spec: invalid ref
        health = http.request("GET", f"http://127.0.0.1:{metrics_port}/healthz")
        assert health.status == 200
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=15)
    assert proc.returncode == 0, stderr
    assert f"routing {namespace}/{ROUTE} (generation 1) on http://127.0.0.1:{port}" in stderr
