"""A PromQL instant-query client for rollout analysis: one query in, one number out.

Every analysis query must come down to a single number per model, so the client reduces
the answer itself and says plainly when it cannot: an empty vector is "no data" (None),
a vector of several series is an error naming them and suggesting ``sum()``, NaN and
infinities are "no data" (a ratio of two zero rates is NaN when a model had no traffic).

Queries go out as a form POST (no URL length limit); a server that refuses POST (HTTP 405,
some proxies) gets GET from then on. The address comes from the rollout spec, so the answer
is bounded in size and time and redirects are not followed.
"""

from __future__ import annotations

import asyncio
import json
import math
from datetime import datetime
from typing import Any

import aiohttp

#: The largest answer read: a single-series result is a few hundred bytes.
MAX_BODY_BYTES = 1024 * 1024
#: Longest excerpt of a non-JSON answer quoted in an error.
MAX_EXCERPT = 200


class PrometheusError(Exception):
    """A query failed (unreachable, bad PromQL, a non-scalar result that cannot be reduced)."""


def _number(raw: Any) -> float | None:
    """Prometheus' string-encoded sample value; NaN and infinities are no data."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise PrometheusError(f"sample value {str(raw)[:32]!r} is not a number") from None
    return value if math.isfinite(value) else None


def _labels(metric: Any) -> str:
    if not isinstance(metric, dict):
        return "{}"
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items())) + "}"


def reduce_result(data: Any) -> float | None:
    """The single value of a query's ``data`` (``resultType`` + ``result``)."""
    if not isinstance(data, dict):
        raise PrometheusError("answer has no data object")
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        if not isinstance(result, list) or len(result) != 2:
            raise PrometheusError("malformed scalar result")
        return _number(result[1])
    if kind == "vector":
        if not isinstance(result, list):
            raise PrometheusError("malformed vector result")
        if not result:
            return None
        if len(result) > 1:
            shown = ", ".join(
                _labels(s.get("metric") if isinstance(s, dict) else None) for s in result[:3]
            )
            more = f" and {len(result) - 3} more" if len(result) > 3 else ""
            raise PrometheusError(
                f"the query must return one series but returned {len(result)} ({shown}{more}); "
                "aggregate it, e.g. sum(...) or sum by () (...)"
            )
        sample = result[0]
        value = sample.get("value") if isinstance(sample, dict) else None
        if not isinstance(value, list) or len(value) != 2:
            raise PrometheusError("malformed vector sample")
        return _number(value[1])
    if kind == "matrix":
        raise PrometheusError(
            "the query returns a range vector; use an instant vector, e.g. wrap the range in "
            "rate(...[${interval}]) or increase(...[${window}])"
        )
    raise PrometheusError(f"unsupported result type {str(kind)[:32]!r}; need a vector or scalar")


def _error_text(status: int, body: bytes) -> str:
    """Prometheus' own error (``errorType: error``) when the body is its error JSON."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict) and doc.get("status") == "error":
        kind = doc.get("errorType") or "error"
        return f"Prometheus refused the query (HTTP {status}, {kind}): {doc.get('error', '')}"
    excerpt = body[:MAX_EXCERPT].decode("utf-8", "replace").strip()
    return f"HTTP {status} from Prometheus: {excerpt or '(empty body)'}"


class PrometheusHttpClient:
    """Instant queries against one Prometheus (the ``PrometheusClient`` protocol).

    ``timeout`` bounds each query end to end (connect, evaluation, transfer) and is also
    sent as the server-side evaluation timeout. Pass ``session`` to share one; otherwise
    the client opens its own on first use and :meth:`close` closes it.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float = 10.0,
        session: aiohttp.ClientSession | None = None,
        max_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.address = address.rstrip("/")
        self.url = f"{self.address}/api/v1/query"
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._session = session
        self._owns_session = session is None
        self._use_get = False

    async def __aenter__(self) -> PrometheusHttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
            )
        return self._session

    async def query(self, promql: str, at: datetime | None = None) -> float | None:
        """The instant query's single value; None for an empty result or NaN; raises
        :class:`PrometheusError` on any failure."""
        params = {"query": promql, "timeout": f"{max(1, math.ceil(self.timeout))}s"}
        if at is not None:
            params["time"] = f"{at.timestamp():.3f}"
        try:
            status, body = await asyncio.wait_for(self._exchange(params), self.timeout)
            if status == 405 and not self._use_get:
                self._use_get = True
                status, body = await asyncio.wait_for(self._exchange(params), self.timeout)
        except TimeoutError:
            raise PrometheusError(
                f"query to {self.address} timed out after {self.timeout:g}s"
            ) from None
        except aiohttp.ClientError as exc:
            raise PrometheusError(f"cannot reach Prometheus at {self.address}: {exc}") from None
        if status != 200:
            raise PrometheusError(_error_text(status, body))
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise PrometheusError(_error_text(status, body)) from None
        if not isinstance(doc, dict) or doc.get("status") != "success":
            raise PrometheusError(_error_text(status, body))
        return reduce_result(doc.get("data"))

    async def _exchange(self, params: dict[str, str]) -> tuple[int, bytes]:
        """One request; (HTTP status, body at most ``max_bytes``)."""
        session = self._client()
        headers = {"Accept": "application/json"}
        if self._use_get:
            request = session.get(self.url, params=params, headers=headers, allow_redirects=False)
        else:
            request = session.post(self.url, data=params, headers=headers, allow_redirects=False)
        async with request as resp:
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > self.max_bytes:
                    raise PrometheusError(
                        f"answer from {self.address} exceeds {self.max_bytes} bytes"
                    )
            return resp.status, bytes(body)
