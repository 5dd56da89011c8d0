"""Process wiring: metrics/health server, leader election, then kopf with our registry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

import aiohttp
import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubetune_operator import queueing
from kubetune_operator.controller import Controller
from kubetune_operator.handlers import build_registry
from kubetune_operator.kube import ApiError, Credentials, KubeClient
from kubetune_operator.leader import LeaderElector
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.pipeline.runtime import PipelineController, pipelines_served
from kubetune_operator.rollout.runtime import RolloutController, rollouts_served
from kubetune_operator.settings import OperatorSettings

logger = logging.getLogger("kubetune.operator")


async def start_http(
    settings: OperatorSettings, metrics: OperatorMetrics, role: dict[str, str]
) -> web.AppRunner | None:
    """``/metrics`` (Prometheus), ``/healthz`` and ``/readyz`` on ``metrics_port``."""
    if not settings.metrics_port:
        return None

    async def serve_metrics(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text=f"ok {role['state']}\n")

    app = web.Application()
    app.router.add_get("/metrics", serve_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.metrics_host, settings.metrics_port)
    await site.start()
    logger.info("serving /metrics on %s:%s", settings.metrics_host, settings.metrics_port)
    return runner


async def kueue_served(
    client: KubeClient, settings: OperatorSettings, stop: asyncio.Event
) -> bool | None:
    """Whether to integrate with Kueue: as configured, or (auto) when the API server serves
    its Workload API. Checked once: installing Kueue later needs an operator restart.

    An API server that cannot be reached (yet) is asked again with backoff -- never read as
    "no Kueue", which would silently queue nothing; None when stopped meanwhile."""
    if settings.kueue != "auto":
        return settings.kueue == "enabled"
    path = f"/apis/{queueing.KUEUE_GROUP}/{queueing.KUEUE_VERSION}"
    delay = 1.0
    while not stop.is_set():
        try:
            resources = await client.get(path)
        except ApiError as exc:
            if exc.status in (403, 404, 503):
                logger.info("Kueue integration off: %s is not served (%s)", path, exc.status)
                return False
            problem = f"{exc.status} {exc.message}"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            names = {r.get("name") for r in resources.get("resources") or []}
            served = queueing.WORKLOADS in names and queueing.RESOURCE_FLAVORS in names
            logger.info("Kueue integration %s", "on" if served else "off")
            return served
        logger.warning(
            "cannot tell whether Kueue is installed (GET %s: %s); retrying in %.0fs",
            path,
            problem,
            delay,
        )
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, 30.0)
    return None


async def run(settings: OperatorSettings) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or until the lease is lost (exit 1)."""
    credentials = Credentials.load(settings.kubeconfig, settings.context)
    metrics = OperatorMetrics()
    client = KubeClient(
        credentials, concurrency=settings.api_concurrency, on_request=metrics.count_request
    )
    role = {"state": "starting"}
    http = await start_http(settings, metrics, role)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)  # kopf installs its own once it runs
    elector: LeaderElector | None = None
    renewer: asyncio.Task[None] | None = None
    try:
        if settings.leader_election:
            elector = LeaderElector(client, settings)
            role["state"] = "standby"
            if not await elector.acquire(stop):
                return 0
            renewer = asyncio.create_task(elector.hold(stop), name="lease-renewer")
        role["state"] = "leader"
        metrics.leader.set(1)
        controller = Controller(client, settings, metrics)
        kueue = await kueue_served(client, settings, stop)
        if kueue is None:
            return 0  # stopped before the API server answered
        controller.kueue = kueue
        rollouts = None
        if await rollouts_served(client):
            rollouts = RolloutController(
                client, settings, metrics.registry, controller.events, controller.cache.job
            )
        pipelines = None
        if await pipelines_served(client):
            pipelines = PipelineController(client, controller.events, controller.cache.job)
        registry = build_registry(controller, credentials, rollouts, pipelines)
        if not stop.is_set():
            await kopf.operator(
                registry=registry,
                clusterwide=settings.clusterwide,
                namespaces=settings.namespaces,
                standalone=True,
                stop_flag=stop,
            )
        return 1 if elector is not None and elector.lost else 0
    finally:
        metrics.leader.set(0)
        if renewer is not None:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        if elector is not None and not elector.lost:
            await elector.release()
        await client.close()
        if http is not None:
            await http.cleanup()


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # kopf is chatty at INFO about every handler call; keep its warnings and errors.
    logging.getLogger("kopf").setLevel(max(logging.WARNING, logging.getLogger().level))


def main(settings: OperatorSettings) -> int:
    configure_logging(settings.log_level)
    return asyncio.run(run(settings))
