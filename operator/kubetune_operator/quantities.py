"""Resource quantities of pods and nodes, as the scheduler counts them."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from kubetune.api.cel import parse_quantity


def quantity(text: Any) -> Decimal:
    """A Kubernetes quantity ("8", "64Gi", "500m") as a number; 0 when unreadable."""
    try:
        return parse_quantity(str(text)).value
    except ValueError:
        return Decimal(0)


def pod_requests(pod: Mapping[str, Any]) -> dict[str, Decimal]:
    """What a pod body asks of a node: its containers' requests summed (limits where a
    request is missing, as the API server defaults them), the largest init container's."""
    spec = pod.get("spec") or {}

    def of(container: Mapping[str, Any]) -> dict[str, Decimal]:
        res = container.get("resources") or {}
        merged = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        return {k: quantity(v) for k, v in merged.items()}

    total: dict[str, Decimal] = {}
    for container in spec.get("containers") or []:
        for key, value in of(container).items():
            total[key] = total.get(key, Decimal(0)) + value
    for container in spec.get("initContainers") or []:
        for key, value in of(container).items():
            total[key] = max(total.get(key, Decimal(0)), value)
    return {k: v for k, v in total.items() if v > 0}


def format_quantity(value: Decimal) -> str:
    return format(value.normalize(), "f") if value == value.to_integral() else str(value)
