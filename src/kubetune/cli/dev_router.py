"""``kubetune dev router``: a weighted HTTP router serving one HTTPRoute (no Gateway needed).

It stands in for a Gateway data plane on the dev cluster: requests to ``--listen`` are split
between the route's backends by their weights, following changes within about a second
(kubetune/devcluster/router.py). Its own endpoints (``/metrics``, ``/healthz``, ``/state``)
are on ``--metrics-listen``, never on the proxied port.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kubetune.cli.extras import require_extra

err = Console(stderr=True, log_path=False, soft_wrap=True)


def router_cmd(
    namespace: Annotated[str, typer.Option("--namespace", "-n", help="The HTTPRoute's.")],
    route: Annotated[str, typer.Option("--route", help="The HTTPRoute's name.")],
    listen: Annotated[
        str, typer.Option(help="HOST:PORT the proxy listens on (port 0: a free one).")
    ] = "127.0.0.1:8080",
    metrics_listen: Annotated[
        str, typer.Option(help="HOST:PORT of /metrics, /healthz and /state.")
    ] = "127.0.0.1:0",
    kubeconfig: Annotated[
        Path | None,
        typer.Option(envvar="KUBECONFIG", help="Default: $KUBECONFIG, ~/.kube/config."),
    ] = None,
    poll_interval: Annotated[
        float, typer.Option(help="Seconds between re-reads besides the watches.")
    ] = 1.0,
    upstream_timeout: Annotated[float, typer.Option(help="Seconds per upstream request.")] = 300,
) -> None:
    """Split HTTP requests between an HTTPRoute's backends by weight, until interrupted."""
    require_extra("operator", "dev router")
    from kubetune.devcluster.router import WeightedRouter

    async def serve() -> None:
        router = WeightedRouter(
            namespace,
            route,
            kubeconfig=kubeconfig,
            listen=listen,
            metrics_listen=metrics_listen,
            poll_interval=poll_interval,
            upstream_timeout=upstream_timeout,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with router:
            gen = router.table.generation
            err.print(f"[green]routing[/] {router.key} (generation {gen}) on {router.url}")
            err.print(f"metrics on {router.metrics_url}/metrics", highlight=False)
            await stop.wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
