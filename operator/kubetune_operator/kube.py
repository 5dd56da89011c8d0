"""A thin async Kubernetes API client on aiohttp (already a kopf dependency).

Why not the ``kubernetes`` package's client: it is synchronous (threads per request) and
deserialises every response into model objects; the operator only moves JSON. The
``kubernetes`` package is still used to *load* credentials (kubeconfig, in-cluster token,
exec plugins) so that authentication behaves exactly like kubectl's.

Every request is counted per verb/resource/code (:attr:`KubeClient.counts` and the
``kubetune_operator_api_requests_total`` metric) -- the benchmark's "API requests per job".
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote

import aiohttp

from kubetune_operator import __version__

logger = logging.getLogger(__name__)

USER_AGENT = f"kubetune-operator/{__version__}"
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"


@dataclass(frozen=True)
class Credentials:
    """Where the API is and how to authenticate, as loaded from kubeconfig / in-cluster."""

    server: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    token: Callable[[], str | None] | None = None
    default_namespace: str | None = None

    @classmethod
    def load(cls, kubeconfig: str | None = None, context: str | None = None) -> Credentials:
        """In-cluster config when running in a pod (and no kubeconfig given), else kubeconfig
        (``kubeconfig`` argument, ``$KUBECONFIG`` or ``~/.kube/config``)."""
        from kubernetes import client, config  # imported lazily: heavy

        cfg = client.Configuration()
        loaded = False
        if kubeconfig is None and context is None:
            try:
                config.load_incluster_config(client_configuration=cfg)
                loaded = True
            except config.ConfigException:
                loaded = False
        if not loaded:
            config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=cfg
            )

        def token() -> str | None:
            # auth_settings() runs the refresh hook (rotated SA tokens, exec plugins).
            entries = cast(dict[str, dict[str, Any]], cfg.auth_settings())
            for entry in entries.values():
                if entry.get("key") == "authorization" and entry.get("value"):
                    return str(entry["value"])
            return None

        return cls(
            server=str(cfg.host).rstrip("/"),
            ca_file=cfg.ssl_ca_cert,
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
            insecure=not cfg.verify_ssl,
            token=token,
        )

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def headers(self) -> dict[str, str]:
        value = self.token() if self.token else None
        return {"Authorization": value} if value else {}


def _resource_of(path: str) -> str:
    """``/api/v1/namespaces/ns/pods/x/status`` -> ``pods/status`` (for request counting)."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    if parts[:1] == ["api"]:
        parts = parts[2:]
    elif parts[:1] == ["apis"]:
        parts = parts[3:]
    if parts[:1] == ["namespaces"] and len(parts) > 2:
        parts = parts[2:]
    if not parts:
        return "namespaces"
    resource = parts[0]
    if len(parts) >= 3:
        resource += "/" + parts[2]
    return resource


class KubeClient:
    """JSON in, JSON out; raises :class:`ApiError`."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        concurrency: int = 32,
        timeout: float = 30.0,
        on_request: Callable[[str, str, int, float], None] | None = None,
    ) -> None:
        self.credentials = credentials
        self._semaphore = asyncio.Semaphore(concurrency)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._concurrency = concurrency
        self.counts: Counter[tuple[str, str, int]] = Counter()
        self._on_request = on_request

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                ssl=self.credentials.ssl_context(), limit=self._concurrency
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers={"User-Agent": USER_AGENT, "Accept": JSON},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = JSON,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        headers = self.credentials.headers()
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body, separators=(",", ":"))
        url = self.credentials.server + path
        started = time.monotonic()
        async with (
            self._semaphore,
            self.session().request(method, url, data=data, headers=headers, params=params) as resp,
        ):
            text = await resp.text()
            status = resp.status
        verb = method.lower()
        self.counts[(verb, _resource_of(path), status)] += 1
        if self._on_request is not None:
            self._on_request(verb, _resource_of(path), status, time.monotonic() - started)
        try:
            payload = json.loads(text) if text else {}
        except ValueError:
            payload = {"message": text[:500]}
        if status >= 400:
            raise ApiError(
                status,
                str(payload.get("reason") or resp.reason or ""),
                str(payload.get("message") or text[:500]),
            )
        return payload if isinstance(payload, dict) else {"items": payload}

    # -- conveniences ------------------------------------------------------------------------
    @staticmethod
    def path(
        resource: str,
        namespace: str | None = None,
        name: str | None = None,
        *,
        group: str = "",
        version: str = "v1",
        subresource: str | None = None,
    ) -> str:
        base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
        if namespace:
            base += f"/namespaces/{quote(namespace)}"
        base += f"/{resource}"
        if name:
            base += f"/{quote(name)}"
        if subresource:
            base += f"/{subresource}"
        return base

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body=body)

    async def get(self, path: str) -> dict[str, Any]:
        return await self.request("GET", path)

    async def replace(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("PUT", path, body=body)

    async def patch(self, path: str, body: Any, content_type: str = MERGE_PATCH) -> dict[str, Any]:
        return await self.request("PATCH", path, body=body, content_type=content_type)

    async def delete(
        self,
        path: str,
        *,
        uid: str | None = None,
        grace_period: int | None = None,
        propagation: str | None = "Background",
    ) -> dict[str, Any]:
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if uid:
            options["preconditions"] = {"uid": uid}
        if grace_period is not None:
            options["gracePeriodSeconds"] = grace_period
        if propagation:
            options["propagationPolicy"] = propagation
        return await self.request("DELETE", path, body=options)
