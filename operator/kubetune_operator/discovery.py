"""Which optional kubetune.io resources the API server serves (their CRD is installed)."""

from __future__ import annotations

import logging

import aiohttp

from kubetune_operator import naming
from kubetune_operator.kube import ApiError, KubeClient


async def kubetune_serves(client: KubeClient, plural: str, kind: str, log: logging.Logger) -> bool:
    """Whether ``/apis/kubetune.io/v1alpha1`` lists ``plural``; logs the controller's state.

    A discovery error counts as not served: the operator runs its FineTuneJob controller
    either way, and the optional controller comes up on the next restart."""
    try:
        found = await client.get(f"/apis/{naming.GROUP}/{naming.VERSION}")
    except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.warning("%s controller off: cannot list %s: %s", kind, naming.GROUP, exc)
        return False
    served = any(r.get("name") == plural for r in found.get("resources") or [])
    log.info("%s controller %s", kind, "on" if served else "off (CRD not installed)")
    return served
