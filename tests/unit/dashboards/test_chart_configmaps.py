"""The chart ships every generated dashboard as a ConfigMap for Grafana's sidecar."""

from __future__ import annotations

import json

from kubetune.dashboards.render import render_all
from tests.unit.chart.chart_helpers import find, render


def test_each_generated_dashboard_is_a_labelled_configmap() -> None:
    assert not find(render(), "ConfigMap"), "off by default"
    docs = render({"grafanaDashboards": {"enabled": True}})
    maps = {cm["metadata"]["name"]: cm for cm in find(docs, "ConfigMap")}
    for name, text in render_all().items():
        cm = maps[f"kubetune-dashboard-{name.removesuffix('.json')}"]
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(cm["data"][name]) == json.loads(text)
