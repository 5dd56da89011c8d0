"""A small asynchronous client of the API server: the reads and watches the router needs."""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp


# -- the API server ------------------------------------------------------------------------------
class KubeClient:
    """A minimal async client (GET, watch) from a kubeconfig, or in-cluster credentials when no
    kubeconfig is given and none is found."""

    def __init__(self, kubeconfig: Path | str | None = None) -> None:
        from kubernetes import client, config

        cfg = client.Configuration()
        path = kubeconfig or os.environ.get("KUBECONFIG")
        if path or Path("~/.kube/config").expanduser().is_file():
            config.load_kube_config(
                config_file=str(path) if path else None, client_configuration=cfg
            )
        else:
            config.load_incluster_config(client_configuration=cfg)
        self.host = str(cfg.host).rstrip("/")
        self.ssl: ssl.SSLContext | bool = False
        if self.host.startswith("https"):
            if cfg.verify_ssl:
                context = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
            else:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if cfg.cert_file:
                context.load_cert_chain(cfg.cert_file, cfg.key_file)
            self.ssl = context
        token = cfg.get_api_key_with_prefix("authorization")
        self.headers = {"Authorization": token} if token else {}
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self.headers, connector=aiohttp.TCPConnector(ssl=self.ssl)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, path: str, **params: str) -> dict[str, Any] | None:
        """The object or list at ``path``; None when it does not exist (404)."""
        timeout = aiohttp.ClientTimeout(total=10)
        async with self.session.get(self.host + path, params=params, timeout=timeout) as resp:
            if resp.status == 404:
                return None
            resp.raise_for_status()
            data: dict[str, Any] = await resp.json()
            return data

    async def watch(self, path: str, **params: str) -> AsyncIterator[dict[str, Any]]:
        """Events of a watch on ``path`` until the server ends it (``timeoutSeconds``)."""
        query = {"watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": "300", **params}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with self.session.get(self.host + path, params=query, timeout=timeout) as resp:
            resp.raise_for_status()
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)
