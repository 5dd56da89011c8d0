"""Grafana dashboards for kubetune, generated from Python with the Grafana Foundation SDK.

``kubetune dashboards`` writes them to ``charts/kubetune/files/dashboards/`` (the chart
ships each as a ConfigMap for Grafana's sidecar) and ``--check`` fails on drift, like the
CRD. Modules: ``common`` (datasource and template variables, panel helpers that always
set a unit), one module per dashboard (``fleet``, ``job``, ``operator_health``,
``rollout``), ``render`` (JSON output) and ``queries`` (the panels' PromQL with the template
variables filled in, for tests against a real Prometheus).

This package file imports nothing heavy: ``queries`` works on the JSON alone, without
the SDK (a dev-only dependency).
"""
