"""The Helm chart, rendered with the real helm: lint, defaults, watched-namespace mode,
settings handed to the operator, optional resources, and the values schema."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.crd import CRD_FILENAME, render_crd_yaml, render_crds
from kubetune.contract.metrics import ALL_METRICS
from kubetune.contract.paths import DEFAULT_METRICS_PORT
from kubetune_operator.settings import OperatorSettings
from tests.unit.chart.chart_helpers import (
    CHART,
    REPO,
    container_env,
    find,
    one,
    render,
    run_helm,
    template,
)

OPERATOR = "kubetune-operator"  # release "kubetune": <fullname>-operator
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
#: Settings the chart sets itself (not under .Values.settings).
CHART_MANAGED = {
    "namespaces",
    "kubeconfig",
    "context",
    "trainer_image",
    "operator_namespace",
    "operator_pod_labels",
    "leader_election",
    "lease_name",
    "lease_namespace",
    "identity",
    "metrics_port",
    "metrics_host",
}


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(p.capitalize() for p in rest)


def _settings_from(deployment: dict[str, Any], namespace: str) -> OperatorSettings:
    """The settings the operator would build from the pod's environment."""
    downward = {"metadata.namespace": namespace, "metadata.name": "kubetune-operator-7d9f-x2"}
    env = {
        name: value if isinstance(value, str) else downward[value["fieldRef"]["fieldPath"]]
        for name, value in container_env(deployment).items()
    }
    assert env["POD_NAMESPACE"] == namespace
    return OperatorSettings.from_env(env)


# -- chart metadata ---------------------------------------------------------------------------
def test_chart_version_is_the_project_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert chart["apiVersion"] == "v2"
    assert chart["version"] == project
    assert chart["appVersion"] == project


def test_helm_lint_passes_strict() -> None:
    proc = run_helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in proc.stdout
    ns = run_helm("lint", "--strict", str(CHART), "--set", "watchNamespaces={a,b}")
    assert "0 chart(s) failed" in ns.stdout


def test_chart_crd_is_the_generated_crd() -> None:
    assert (CHART / "crds" / CRD_FILENAME).read_text() == render_crd_yaml()
    files = render_crds()
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(files)
    for name, text in files.items():
        assert (CHART / "crds" / name).read_text() == text, name


# -- default render ---------------------------------------------------------------------------
def test_default_render_objects() -> None:
    docs = render()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",  # the leader-election Lease
            "RoleBinding",
            "Role",  # list the tenant policy tiers' ConfigMaps
            "RoleBinding",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
        ]
    )
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["helm.sh/chart"] == "kubetune-0.1.0"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/instance"] == "kubetune"
        assert labels["app.kubernetes.io/version"] == "0.1.0"


def test_deployment_is_ha_and_restricted() -> None:
    docs = render()
    deploy = one(docs, "Deployment", OPERATOR)
    spec = deploy["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert spec["replicas"] == 2
    assert container["image"] == "kubetune/operator:0.1.0"
    # probes on the metrics port
    port = next(p for p in container["ports"] if p["name"] == "metrics")
    assert port["containerPort"] == 8080
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # restricted Pod Security Standard, uid of the image (images/operator.Dockerfile)
    dockerfile = (REPO / "images" / "operator.Dockerfile").read_text()
    uid = int(re.search(r"^USER (\d+)", dockerfile, re.M).group(1))  # type: ignore[union-attr]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    # spread over nodes and zones
    selector = spec["selector"]["matchLabels"]
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    assert pod["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"] == selector
    # the PDB keeps one replica
    pdb = one(docs, "PodDisruptionBudget", OPERATOR)
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}
    # the metrics Service selects the pods
    service = one(docs, "Service", OPERATOR)
    assert service["spec"]["selector"] == selector
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_operator_settings_from_the_pod_environment() -> None:
    deploy = one(render(), "Deployment", OPERATOR)
    env = container_env(deploy)
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    settings = _settings_from(deploy, "kubetune-system")
    assert settings.clusterwide
    assert settings.leader_election
    assert (settings.lease_namespace, settings.lease_name) == ("kubetune-system", OPERATOR)
    assert settings.trainer_image == "kubetune/trainer:0.1.0"
    # The per-job NetworkPolicy admits exactly the chart's operator pods.
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert settings.operator_pod_labels == deploy["spec"]["selector"]["matchLabels"]
    assert settings.operator_pod_labels.items() <= pod_labels.items()
    assert settings.operator_namespace == "kubetune-system"
    # Defaults left alone are the operator's own defaults.
    assert settings.allowed_service_accounts == ["default"]
    assert settings.network_policy is True


def test_values_settings_reach_the_operator() -> None:
    values = {
        "watchNamespaces": ["team-a", "team-b"],
        "trainer": {"image": {"repository": "registry.example.com/ml/trainer", "tag": "1.2"}},
        "settings": {
            "allowedImages": ["registry.example.com/ml/*"],
            "allowedServiceAccounts": ["default", "ml-*"],
            "allowedPriorityClasses": ["high", "low"],
            "allowedTolerationKeys": ["nvidia.com/gpu"],
            "allowTolerateAllTaints": True,
            "networkPolicy": False,
            "metricsScrapeNamespaces": ["monitoring"],
            "validationPodAnnotations": {"sidecar.istio.io/inject": "false"},
            "backoffBaseSeconds": 1000000,
            "progressTimeoutSeconds": 0.5,
            "workers": 8,
            "logLevel": "DEBUG",
        },
    }
    settings = _settings_from(one(render(values), "Deployment", OPERATOR), "ops")
    assert settings.namespaces == ["team-a", "team-b"]
    assert settings.trainer_image == "registry.example.com/ml/trainer:1.2"
    assert settings.allowed_images == ["registry.example.com/ml/*"]
    assert settings.allowed_service_accounts == ["default", "ml-*"]
    assert settings.allowed_priority_classes == ["high", "low"]
    assert settings.allowed_toleration_keys == ["nvidia.com/gpu"]
    assert settings.allow_tolerate_all_taints is True
    assert settings.network_policy is False
    assert settings.metrics_scrape_namespaces == ["monitoring"]
    assert settings.validation_pod_annotations == {"sidecar.istio.io/inject": "false"}
    assert settings.backoff_base_seconds == 1_000_000
    assert settings.progress_timeout_seconds == 0.5
    assert settings.workers == 8
    assert settings.log_level == "DEBUG"
    assert settings.lease_namespace == "ops"


def test_every_operator_setting_is_a_chart_value() -> None:
    """values.schema.json's `settings` covers OperatorSettings (less what the chart sets),
    with the same JSON types; values.yaml lists each key."""
    model = OperatorSettings.model_json_schema()["properties"]
    expected = {_camel(n) for n in model} - {_camel(n) for n in CHART_MANAGED}
    schema_settings = SCHEMA["properties"]["settings"]["properties"]
    assert set(schema_settings) == expected
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["settings"]
    assert set(defaults) == expected
    for name, prop in model.items():
        if name in CHART_MANAGED:
            continue
        want = {prop["type"]} if "type" in prop else {a["type"] for a in prop["anyOf"]}
        got = set(schema_settings[_camel(name)]["type"])
        assert want | {"null"} == got, name


def test_digest_pins_images() -> None:
    digest = "sha256:" + "a" * 64
    values = {"image": {"repository": "r/op", "digest": digest}}
    deploy = one(render(values), "Deployment", OPERATOR)
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == f"r/op@{digest}"


def test_single_replica_has_no_pdb() -> None:
    """minAvailable 1 with one replica would block every node drain."""
    assert not find(render({"replicaCount": 1}), "PodDisruptionBudget")


def test_operator_network_policy_admits_only_the_metrics_port() -> None:
    docs = render()
    policy = one(docs, "NetworkPolicy", OPERATOR)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    deploy = one(docs, "Deployment", OPERATOR)
    assert policy["spec"]["podSelector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    assert not find(render({"networkPolicy": {"enabled": False}}), "NetworkPolicy")


# -- optional resources -----------------------------------------------------------------------
def test_monitoring_resources_only_when_enabled() -> None:
    assert not {"ServiceMonitor", "PodMonitor", "PrometheusRule"} & {d["kind"] for d in render()}
    docs = render(
        {
            "serviceMonitor": {"enabled": True},
            "podMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
        }
    )
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service", OPERATOR)
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    # the operator's job-level series keep their own namespace label (docs/metrics.md)
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    # the job label the alert rules select on
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == OPERATOR
    pod_monitor = one(docs, "PodMonitor")
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    assert pod_monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "kubetune-trainer",
        "kubetune.io/role": "worker",
        "kubetune.io/rank": "0",  # only rank 0 serves /metrics: no always-down targets
    }
    relabel = pod_monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_label_kubetune_io_job_name"],
        "targetLabel": "finetunejob",
    } in relabel
    rules_files = sorted((CHART / "files" / "rules").glob("*.yaml"))
    rules = find(docs, "PrometheusRule")
    assert len(rules) == len(rules_files) >= 1
    for path in rules_files:
        assert yaml.safe_load(path.read_text())["groups"] in [r["spec"]["groups"] for r in rules]


def test_pod_monitor_follows_watched_namespaces() -> None:
    docs = render({"podMonitor": {"enabled": True}, "watchNamespaces": ["team-a"]})
    assert one(docs, "PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}


def test_pod_monitor_selects_the_operators_training_pods() -> None:
    """The PodMonitor's selector and port name match the worker pods the operator renders."""
    from kubetune.api import FineTuneJob
    from kubetune_operator.render.pods import render_worker_pod

    job = FineTuneJob.model_validate(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "tune", "namespace": "team-a", "uid": "u1"},
            "spec": {
                "method": "lora",
                "model": {"uri": "/models/m"},
                "dataset": {"train": "/data/train.jsonl", "format": "chat"},
                "hyperparameters": {"globalBatchSize": 8, "microBatchSize": 1},
                "resources": {"nodes": 1, "gpusPerNode": 1, "cpu": "1", "memory": "1Gi"},
                "output": {"uri": "s3://bucket/tune"},
            },
        }
    )
    settings = OperatorSettings(progress_port=9411)
    pod = render_worker_pod(job, 1, 0, settings)
    monitor = one(render({"podMonitor": {"enabled": True}}), "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    port_name = monitor["spec"]["podMetricsEndpoints"][0]["port"]
    ports = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c["ports"]}
    assert ports[port_name] == settings.progress_port
    assert OperatorSettings().progress_port == DEFAULT_METRICS_PORT


def test_alert_rules_use_the_contracts_metric_names() -> None:
    """Every metric a rule reads is one the trainer or the operator exports (the metrics
    contract, histograms with their _bucket/_sum/_count series), or a series the rules
    themselves record (level:metric:operations)."""
    known = {m.name for m in ALL_METRICS}
    known |= {
        f"{m.name}{suffix}"
        for m in ALL_METRICS
        if m.type == "histogram"
        for suffix in ("_bucket", "_sum", "_count")
    }
    all_exprs: list[str] = []
    for path in (CHART / "files" / "rules").glob("*.yaml"):
        rules = [r for group in yaml.safe_load(path.read_text())["groups"] for r in group["rules"]]
        recorded = {r["record"] for r in rules if "record" in r}
        exprs = [rule["expr"] for rule in rules]
        all_exprs += exprs
        names = {
            n
            for expr in exprs
            for n in re.findall(r"\b(?:[a-z_]+:)?kubetune_[a-z_]+(?::[a-z0-9_]+)?", expr)
        }
        assert names, path
        unknown = names - known - recorded
        assert not unknown, f"{path.name}: metrics neither exported nor recorded: {unknown}"
    assert any("absent(up{" in e for e in all_exprs), "an operator-down alert"
    assert any("kubetune_operator_leader" in e for e in all_exprs), "a no-leader alert"


def test_prometheus_rule_runbook_urls_follow_the_base_value() -> None:
    """The rules ship as they are (promtool tests exactly them) except each alert's
    runbook_url, rebuilt from prometheusRule.runbookBaseURL."""
    base = "https://git.example.com/mirror/kubetune/-/blob/main/docs/runbooks/"
    docs = render({"prometheusRule": {"enabled": True, "runbookBaseURL": base}})
    rendered = [r["spec"]["groups"] for r in find(docs, "PrometheusRule")]
    alerts = 0
    for path in sorted((CHART / "files" / "rules").glob("*.yaml")):
        groups = yaml.safe_load(path.read_text())["groups"]
        for group in groups:
            for rule in group["rules"]:
                if "alert" in rule:
                    alerts += 1
                    rule["annotations"]["runbook_url"] = f"{base}{rule['alert']}.md"
        assert groups in rendered, path.name
    assert alerts >= 15


def _chart_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "kubetune"
    shutil.copytree(CHART, copy, ignore=shutil.ignore_patterns("argocd"))
    return copy


def test_dashboards_become_labelled_configmaps(tmp_path: Path) -> None:
    chart = _chart_copy(tmp_path)
    board = {"title": "kubetune jobs", "panels": []}
    (chart / "files" / "dashboards" / "kubetune_jobs.json").write_text(json.dumps(board))
    assert not find(render(chart=chart), "ConfigMap")
    docs = render({"grafanaDashboards": {"enabled": True}}, chart=chart)
    cm = one(docs, "ConfigMap", "kubetune-dashboard-kubetune-jobs")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["kubetune_jobs.json"]) == board


def test_argocd_snippet_from_the_lua_files(tmp_path: Path) -> None:
    chart = _chart_copy(tmp_path)
    base = chart / "argocd" / "resource_customizations" / "kubetune.io" / "FineTuneJob"
    (base / "actions").mkdir(parents=True)
    (base / "health.lua").write_text('hs = {}\nhs.status = "Healthy"\nreturn hs\n')
    (base / "actions" / "discovery.lua").write_text("actions = {}\nreturn actions\n")
    for name in ("suspend", "resume", "restart"):
        (base / "actions" / name).mkdir()
        (base / "actions" / name / "action.lua").write_text(f"-- {name}\nreturn obj\n")
    assert not find(render(chart=chart), "ConfigMap")
    cm = one(render({"argocd": {"enabled": True}}, chart=chart), "ConfigMap")
    data = cm["data"]
    assert data["resource.customizations.health.kubetune.io_FineTuneJob"] == (
        (base / "health.lua").read_text()
    )
    actions = yaml.safe_load(data["resource.customizations.actions.kubetune.io_FineTuneJob"])
    assert actions["discovery.lua"] == "actions = {}\nreturn actions\n"
    assert {d["name"]: d["action.lua"] for d in actions["definitions"]} == {
        n: f"-- {n}\nreturn obj\n" for n in ("restart", "resume", "suspend")
    }


def test_argocd_without_a_health_check_fails_clearly(tmp_path: Path) -> None:
    proc = template({"argocd": {"enabled": True}}, chart=_chart_copy(tmp_path), check=False)
    assert proc.returncode != 0 and "health.lua is missing" in proc.stderr


# -- the schema refuses bad values ------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": 2}, "replicas"),  # a typo of replicaCount
        ({"settings": {"allowedImage": ["x"]}}, "allowedImage"),
        ({"settings": {"allowedImages": "x,y"}}, "allowedImages"),
        ({"settings": {"workers": 0}}, "workers"),
        ({"settings": {"progressIntervalSeconds": 60}}, "progressIntervalSeconds"),
        ({"settings": {"logLevel": "LOUD"}}, "logLevel"),
        ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
        ({"watchNamespaces": "team-a"}, "watchNamespaces"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
        ({"securityContext": {"privileged": True}}, "privileged"),
        ({"image": {"repository": "x", "digest": "latest"}}, "digest"),
        ({"serviceMonitor": {"enabled": True, "intervall": "1m"}}, "intervall"),
        ({"metrics": {"port": 70000}}, "port"),
        ({"extraEnv": [{"name": "KUBETUNE_OPERATOR_NAMESPACES", "value": "x"}]}, "extraEnv"),
    ],
)
def test_schema_rejects(values: dict[str, Any], message: str) -> None:
    proc = template(values, check=False)
    assert proc.returncode != 0, f"accepted {values}"
    assert "schema" in proc.stderr and message in proc.stderr, proc.stderr


def test_container_command_is_the_image_entrypoint() -> None:
    """Runtimes that run no image entrypoint (the dev cluster's real-pod nodes) still start
    the operator: the command is explicit and the same as the image's ENTRYPOINT."""
    dockerfile = (REPO / "images" / "operator.Dockerfile").read_text()
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M)
    assert entrypoint is not None
    container = one(render(), "Deployment", OPERATOR)["spec"]["template"]["spec"]["containers"][0]
    assert (
        container["command"] == json.loads(entrypoint.group(1)) == ["kubetune", "operator", "run"]
    )
    assert container["args"] == ["--metrics-port=8080"]


def test_devcluster_example_values_place_everything_on_the_real_pool() -> None:
    """charts/kubetune/examples/devcluster-values.yaml (DEVCLUSTER.md): the operator on the
    tainted real-pod nodes, jobs allowed to tolerate that taint, validation pods there too."""
    from kubetune.devcluster.nodeagent.config import NODE_POOL, TAINT_KEY

    values = yaml.safe_load((CHART / "examples" / "devcluster-values.yaml").read_text())
    deploy = one(render(values), "Deployment", OPERATOR)
    pod = deploy["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"kubetune.io/node-pool": NODE_POOL}
    assert pod["tolerations"] == [{"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]
    settings = _settings_from(deploy, "kubetune-system")
    assert settings.allowed_toleration_keys == [TAINT_KEY]
    assert settings.validation_node_selector == {"kubetune.io/node-pool": NODE_POOL}
    assert settings.progress_url_template == OperatorSettings().progress_url_template
