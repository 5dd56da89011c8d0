"""A small synchronous Kubernetes API client (stdlib only): JSON requests and watches.

The agent needs a handful of verbs (get, create, merge-patch, delete, watch); the stdlib keeps
the dev cluster free of the ``operator`` extra and of an async runtime.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

JSON = dict[str, Any]


class ApiError(Exception):
    """A non-2xx answer (``code`` 0: the server could not be reached)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"HTTP {code}: {message}")
        self.code = code


class KubeApi:
    """Client for one API server, authenticated by a kubeconfig's embedded client
    certificate (or bearer token)."""

    def __init__(self, kubeconfig: Path, cred_dir: Path, timeout: float = 30.0) -> None:
        self.timeout = timeout
        doc = yaml.safe_load(kubeconfig.read_text())
        ctx_name = doc.get("current-context")
        ctx = next(c["context"] for c in doc["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in doc["users"] if u["name"] == ctx["user"])
        self.server = str(cluster["server"]).rstrip("/")
        cred_dir.mkdir(parents=True, exist_ok=True)
        cred_dir.chmod(0o700)
        self.ctx = ssl.create_default_context(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
        )
        self.token: str | None = user.get("token")
        if "client-certificate-data" in user:
            crt, key = cred_dir / "client.crt", cred_dir / "client.key"
            for path, field in ((crt, "client-certificate-data"), (key, "client-key-data")):
                path.write_bytes(base64.b64decode(user[field]))
                path.chmod(0o600)
            self.ctx.load_cert_chain(str(crt), str(key))

    def _open(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type or "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            return urllib.request.urlopen(req, context=self.ctx, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, exc.read().decode(errors="replace")[:500]) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ApiError(0, str(exc)) from None

    def request(
        self, method: str, path: str, body: Any = None, content_type: str | None = None
    ) -> JSON:
        with self._open(method, path, body, content_type) as resp:
            raw = resp.read()
        return dict(json.loads(raw)) if raw else {}

    def get(self, path: str) -> JSON:
        return self.request("GET", path)

    def create(self, path: str, body: JSON) -> JSON:
        return self.request("POST", path, body)

    def merge_patch(self, path: str, patch: JSON) -> JSON:
        return self.request("PATCH", path, patch, "application/merge-patch+json")

    def delete(self, path: str, options: JSON | None = None) -> JSON:
        return self.request("DELETE", path, options)

    def watch(self, path: str, params: dict[str, str], timeout_seconds: int = 60) -> Iterator[JSON]:
        """Watch events of a collection (``ADDED``/``MODIFIED``/``DELETED``/``BOOKMARK``/
        ``ERROR``), one dict each, until the server ends the watch."""
        query = urllib.parse.urlencode(
            {**params, "watch": "true", "timeoutSeconds": str(timeout_seconds)}
        )
        with self._open("GET", f"{path}?{query}", timeout=timeout_seconds + 15) as resp:
            for line in resp:
                if line.strip():
                    yield dict(json.loads(line))
