"""The per-second timeline: both models' key metrics queried from Prometheus."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kubetune.devcluster.prometheus import PrometheusAPI
from kubetune.devcluster.versions import DevClusterError


# -- timeline ----------------------------------------------------------------------------------
def timeline_queries(models: tuple[str, ...], window: str = "10s") -> dict[str, str]:
    """PromQL per timeline signal, each ``by (model_name)`` for both models at once."""
    names = "|".join(models)  # plain DNS names: nothing to escape
    sel = f'model_name=~"{names}"'
    ok = f"sum by (model_name) (rate(vllm:request_success_total{{{sel}}}[{window}]))"
    err = f"sum by (model_name) (rate(kubetune_serve_request_errors_total{{{sel}}}[{window}]))"
    return {
        "p95_latency_s": "histogram_quantile(0.95, sum by (model_name, le) (rate("
        f"vllm:e2e_request_latency_seconds_bucket{{{sel}}}[{window}])))",
        "error_rate": f"{err} / ({err} + {ok})",
        "requests_per_s": f"{err} + {ok}",
        "positive_share": "sum by (model_name) "
        f'(kubetune_serve_feedback_total{{{sel},rating="positive"}})'
        f" / sum by (model_name) (kubetune_serve_feedback_total{{{sel}}})",
    }


def _finite(value: str) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def sample_metrics(api: PrometheusAPI, queries: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """model name -> {signal: value or None} (None: no data, NaN or a failed query)."""
    out: dict[str, dict[str, Any]] = {}
    for signal, expr in queries.items():
        try:
            result = api.query(expr)
        except (OSError, DevClusterError):
            continue
        for sample in result:
            model = sample["metric"].get("model_name")
            if model:
                out.setdefault(model, {})[signal] = _finite(sample["value"][1])
    return out


def timestamp_of(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
