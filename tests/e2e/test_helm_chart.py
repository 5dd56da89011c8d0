"""The Helm chart on the dev cluster, with the real helm: rendered objects accepted by the
API server (server-side dry run), install, a FineTuneJob driven to Running by the real
operator holding a token of the chart's ServiceAccount, upgrade, the CRD upgrade path, and an
uninstall that leaves no orphans.

The KWOK nodes never execute containers, so the chart's operator Deployment cannot really
run the operator here: the release is installed with 0 replicas, and the operator runs as a
local process (``OperatorProcess``) with the Deployment's own environment and a token of the
chart's ServiceAccount, so the chart's RBAC and settings are what it runs on. The upgrade
scales the Deployment to 2 replicas: KWOK fakes them Running, which shows the pod spec is
admitted by the restricted Pod Security Standard of the release namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.devcluster.build import find_go
from kubetune.devcluster.testing import Cluster, wait_until
from kubetune.devcluster.versions import cache_dir
from tests.e2e import operator_helpers
from tests.e2e.operator_helpers import (
    REPO,
    TRAINER_IMAGE,
    OperatorProcess,
    ProgressServer,
    condition,
    job_status,
    kget,
    ns_fixture,  # noqa: F401  (fixture)
    start_running,
    worker_pods,
)

CHART = REPO / "charts" / "kubetune"
CRD_FILE = CHART / "crds" / "kubetune.io_finetunejobs.yaml"
RELEASE = "kt-e2e"
OPERATOR = f"{RELEASE}-kubetune-operator"
#: prometheus-operator release whose example CRDs (ServiceMonitor, PodMonitor,
#: PrometheusRule) the dry run installs, fetched through the Go module proxy.
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"
PROMETHEUS_CRDS = ("servicemonitors", "podmonitors", "prometheusrules")

#: Operator settings for a fast test, set through the chart's values.
FAST_SETTINGS = {
    "backoffBaseSeconds": 1,
    "backoffMaxSeconds": 4,
    "nodeLostGraceSeconds": 1,
    "progressIntervalSeconds": 1,
    "progressTimeoutSeconds": 1,
    "leaseDurationSeconds": 4,
    "renewDeadlineSeconds": 3,
    "retryPeriodSeconds": 0.5,
    "validationTimeoutSeconds": 120,
    "terminationGracePeriodSeconds": 5,
    "capacityRecheckSeconds": 1,
    "allowedServiceAccounts": ["default", "e2e-*"],
}
#: Chart-owned kinds that must be gone after `helm uninstall`.
NAMESPACED_KINDS = (
    "serviceaccounts",
    "roles.rbac.authorization.k8s.io",
    "rolebindings.rbac.authorization.k8s.io",
    "deployments.apps",
    "configmaps",
    "services",
    "networkpolicies.networking.k8s.io",
    "poddisruptionbudgets.policy",
)
CLUSTER_KINDS = (
    "clusterroles.rbac.authorization.k8s.io",
    "clusterrolebindings.rbac.authorization.k8s.io",
)


# -- helpers ----------------------------------------------------------------------------------
def prometheus_operator_crds() -> tuple[Path | None, str]:
    """The monitoring.coreos.com CRDs, cached like the cluster binaries
    (``<cache>/crds/prometheus-operator-<version>/``), downloaded once as the
    prometheus-operator Go module (its example/prometheus-operator-crd/ folder)."""
    target = cache_dir() / "crds" / f"prometheus-operator-{PROMETHEUS_OPERATOR_VERSION}"
    if (target / ".complete").is_file():
        return target, ""
    go = find_go()
    if go is None:
        return None, "no Go toolchain to fetch the prometheus-operator module"
    work = Path(tempfile.mkdtemp(prefix="kubetune-promop-"))
    try:
        env = {
            **os.environ,
            "GOPATH": str(work / "gopath"),
            "GOMODCACHE": str(work / "modcache"),
            "GOFLAGS": "-mod=mod",
        }
        module = f"github.com/prometheus-operator/prometheus-operator@{PROMETHEUS_OPERATOR_VERSION}"
        proc = subprocess.run(
            [str(go), "mod", "download", "-json", module],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=work,
        )
        if proc.returncode != 0:
            return None, f"go mod download {module} failed: {(proc.stdout + proc.stderr)[-500:]}"
        source = Path(json.loads(proc.stdout)["Dir"]) / "example" / "prometheus-operator-crd"
        target.mkdir(parents=True, exist_ok=True)
        for kind in PROMETHEUS_CRDS:
            shutil.copyfile(source / f"monitoring.coreos.com_{kind}.yaml", target / f"{kind}.yaml")
        (target / ".complete").write_text(module + "\n")
        return target, ""
    except (OSError, subprocess.SubprocessError, KeyError, ValueError) as exc:
        return None, f"fetching the prometheus-operator CRDs failed: {exc}"
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(work)], check=False)  # the module cache is r/o
        shutil.rmtree(work, ignore_errors=True)


def values_file(tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / f"values-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def docs_of(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def manifest_deployment(cluster: Cluster, namespace: str) -> dict[str, Any]:
    manifest = cluster.helm("get", "manifest", RELEASE, "--namespace", namespace).stdout
    return next(d for d in docs_of(manifest) if d["kind"] == "Deployment")


def pod_env(deployment: dict[str, Any], namespace: str, pod_name: str) -> dict[str, str]:
    """The operator container's environment as the kubelet would give it (Downward API)."""
    downward = {"metadata.namespace": namespace, "metadata.name": pod_name}
    env: dict[str, str] = {}
    for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "valueFrom" in item:
            env[item["name"]] = downward[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:  # the API server drops an empty value
            env[item["name"]] = item.get("value", "")
    return env


def sa_kubeconfig(cluster: Cluster, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig holding a token of ``service_account`` (its RBAC only)."""
    token = cluster.kubectl(
        "create", "token", service_account, "--duration=1h", namespace=namespace
    ).stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    ca = admin["clusters"][0]["cluster"]["certificate-authority-data"]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "e2e",
                        "cluster": {"server": cluster.server, "certificate-authority-data": ca},
                    }
                ],
                "users": [{"name": service_account, "user": {"token": token}}],
                "contexts": [
                    {"name": "sa", "context": {"cluster": "e2e", "user": service_account}}
                ],
                "current-context": "sa",
            }
        )
    )
    path.chmod(0o600)
    return path


def can_i(cluster: Cluster, namespace: str, verb: str, resource: str, where: str | None) -> bool:
    resource, _, subresource = resource.partition("/")
    args = ["auth", "can-i", verb, resource, f"--as=system:serviceaccount:{namespace}:{OPERATOR}"]
    args += [f"--subresource={subresource}"] if subresource else []
    args += ["--namespace", where] if where else []
    proc = cluster.kubectl(*args, check=False)
    return proc.stdout.strip() == "yes"


def release_objects(cluster: Cluster) -> list[str]:
    """Everything labelled as part of the release, cluster-wide."""
    found = []
    selector = f"app.kubernetes.io/instance={RELEASE}"
    for kind in (*NAMESPACED_KINDS, *CLUSTER_KINDS):
        items = kget(cluster, kind, "-A", "-l", selector)["items"]
        found += [
            f"{kind}/{i['metadata'].get('namespace', '')}/{i['metadata']['name']}" for i in items
        ]
    return found


@pytest.fixture
def release_ns(cluster: Cluster) -> Iterator[str]:
    """The release namespace, enforcing the restricted Pod Security Standard."""
    name = f"kt-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    try:
        yield name
    finally:
        cluster.helm("uninstall", RELEASE, "--namespace", name, check=False)
        cluster.kubectl(
            "delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False
        )


# -- tests ------------------------------------------------------------------------------------
def test_rendered_chart_passes_server_side_dry_run(cluster: Cluster, tmp_path: Path) -> None:
    """Every object of the chart (all optional resources on), cluster-wide and per watched
    namespace, is accepted by the API server."""
    crds, why = prometheus_operator_crds()
    monitoring = crds is not None
    if monitoring:
        for path in sorted(crds.glob("*.yaml")):  # type: ignore[union-attr]
            cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        for kind in PROMETHEUS_CRDS:
            cluster.kubectl(
                "wait",
                "--for=condition=Established",
                f"crd/{kind}.monitoring.coreos.com",
                "--timeout=60s",
            )
    argocd = (
        CHART / "argocd" / "resource_customizations" / "kubetune.io" / "FineTuneJob" / "health.lua"
    ).is_file()
    suffix = uuid.uuid4().hex[:6]
    namespaces = [f"kt-dry-{suffix}", f"kt-team-{suffix}"]
    for ns in namespaces:
        cluster.kubectl("create", "namespace", ns)
    try:
        kinds_seen: set[str] = set()
        for watch in ([], [namespaces[1]]):
            values = {
                "watchNamespaces": watch,
                "serviceMonitor": {"enabled": monitoring},
                "podMonitor": {"enabled": monitoring},
                "prometheusRule": {"enabled": monitoring},
                "grafanaDashboards": {"enabled": True},
                "argocd": {"enabled": argocd},
                "settings": FAST_SETTINGS,
            }
            rendered = cluster.helm(
                "template",
                RELEASE,
                str(CHART),
                "--namespace",
                namespaces[0],
                "-f",
                values_file(tmp_path, values),
            ).stdout
            kinds_seen |= {d["kind"] for d in docs_of(rendered)}
            proc = cluster.kubectl(
                "apply", "--dry-run=server", "-f", "-", input=rendered, check=False
            )
            assert proc.returncode == 0, proc.stderr
            assert "Warning" not in proc.stderr, proc.stderr
        expected = {"Deployment", "ClusterRole", "Role", "PodDisruptionBudget", "NetworkPolicy"}
        if monitoring:
            expected |= {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
        assert expected <= kinds_seen
    finally:
        for ns in namespaces:
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    if not monitoring:
        pytest.skip(f"ServiceMonitor/PodMonitor/PrometheusRule not dry-run: {why}")


def test_install_run_upgrade_crds_uninstall(
    cluster: Cluster, release_ns: str, ns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values: dict[str, Any] = {
        "replicaCount": 0,  # KWOK cannot run the operator image: it runs as a process below
        "watchNamespaces": [ns],
        "trainer": {"image": {"repository": TRAINER_IMAGE.split(":")[0], "tag": "e2e"}},
        "settings": FAST_SETTINGS,
    }
    # -- install (the CRD from crds/, unless an earlier test installed it already)
    installed = cluster.helm(
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        release_ns,
        "-f",
        values_file(tmp_path, values),
        "--wait",
        "--timeout",
        "2m",
    )
    notes = installed.stdout
    assert f"Serves the namespaces: {ns}" in notes, notes
    assert "kubectl apply --server-side --force-conflicts -f charts/kubetune/crds/" in notes
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/finetunejobs.kubetune.io", "--timeout=60s"
    )
    assert can_i(cluster, release_ns, "create", "pods", ns)
    assert can_i(cluster, release_ns, "patch", "finetunejobs.kubetune.io/status", ns)
    assert can_i(cluster, release_ns, "list", "nodes", None)
    assert can_i(cluster, release_ns, "patch", "events", ns)  # repeats aggregate
    assert can_i(cluster, release_ns, "update", "leases.coordination.k8s.io", release_ns)
    assert not can_i(cluster, release_ns, "create", "pods", "kube-system")
    assert not can_i(cluster, release_ns, "get", "secrets", ns)
    assert not can_i(cluster, release_ns, "update", "finetunejobs.kubetune.io", ns)

    # -- the real operator, with the Deployment's environment and the chart's ServiceAccount.
    # The session's shared cluster-wide operator (other modules' `operators` fixture) would
    # reconcile the same jobs: stop it (the `operator` fixture starts a new one when needed).
    operator_helpers.stop_shared_operator()
    deployment = manifest_deployment(cluster, release_ns)
    env = pod_env(deployment, release_ns, f"{OPERATOR}-0")
    kubeconfig = sa_kubeconfig(cluster, release_ns, OPERATOR, tmp_path / "sa.kubeconfig")
    # OperatorProcess pins the lease namespace to its constant: the release namespace here.
    monkeypatch.setattr(operator_helpers, "OPERATOR_NAMESPACE", release_ns)
    with ProgressServer() as progress:
        env["KUBETUNE_OPERATOR_PROGRESS_URL_TEMPLATE"] = progress.template
        operator = OperatorProcess(kubeconfig, tmp_path, f"{OPERATOR}-0", env=env).start()
        try:
            operator.wait_ready()
            lease = kget(cluster, "lease", OPERATOR, namespace=release_ns)
            assert lease["spec"]["holderIdentity"] == f"{OPERATOR}-0"
            status = start_running(cluster, ns, "helm-job")
            assert status["phase"] == "Running"
            rank0 = worker_pods(cluster, ns, "helm-job")[0]
            progress.serve(rank0, step=5, totalSteps=50)
            wait_until(
                lambda: (
                    condition(job_status(cluster, ns, "helm-job"), "ProgressKnown").get("status")
                    == "True"
                ),
                timeout=30,
                what="progress read through the chart's settings",
            )
            # The job's NetworkPolicy admits exactly the chart's operator pods.
            policy = kget(cluster, "networkpolicy", "helm-job", namespace=ns)
            peers = [p for rule in policy["spec"]["ingress"] for p in rule["from"]]
            selector = deployment["spec"]["selector"]["matchLabels"]
            assert {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": release_ns}},
                "podSelector": {"matchLabels": selector},
            } in peers
            scraped = operator.metrics().splitlines()
            assert not [m for m in scraped if m.startswith("kubetune_status_write_failures_total{")]
        except BaseException:
            print(operator.log_tail(200))
            raise
        finally:
            operator.stop()

    # -- upgrade: more namespaces, 2 replicas, a changed setting
    ns2 = f"{ns}-b"
    cluster.kubectl("create", "namespace", ns2)
    try:
        values2 = {
            **values,
            "replicaCount": 2,
            "watchNamespaces": [ns, ns2],
            "settings": {**FAST_SETTINGS, "allowedPriorityClasses": ["high"]},
        }
        cluster.helm(
            "upgrade",
            RELEASE,
            str(CHART),
            "--namespace",
            release_ns,
            "-f",
            values_file(tmp_path, values2),
            "--wait",
            "--timeout",
            "2m",
        )
        assert can_i(cluster, release_ns, "create", "pods", ns2)
        deployment = kget(cluster, "deployment", OPERATOR, namespace=release_ns)
        env2 = pod_env(deployment, release_ns, "x")
        assert env2["KUBETUNE_OPERATOR_ALLOWED_PRIORITY_CLASSES"] == "high"
        assert env2["KUBETUNE_OPERATOR_NAMESPACES"] == f"{ns},{ns2}"
        # 2 pods admitted under Pod Security "restricted" (KWOK fakes them Running)
        assert deployment["status"].get("readyReplicas") == 2
        kget(cluster, "poddisruptionbudget", OPERATOR, namespace=release_ns)
        history = json.loads(
            cluster.helm("history", RELEASE, "--namespace", release_ns, "-o", "json").stdout
        )
        assert [h["revision"] for h in history] == [1, 2]

        # -- the CRD upgrade path: Helm leaves crds/ alone; `kubectl apply --server-side` updates
        crd = yaml.safe_load(CRD_FILE.read_text().split("---", 1)[1])
        old = json.loads(json.dumps(crd))
        old["metadata"]["labels"]["kubetune.io/crd-test"] = "older"
        version = old["spec"]["versions"][0]
        version["additionalPrinterColumns"] = version["additionalPrinterColumns"][:1]
        cluster.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump(old)
        )
        cluster.helm(
            "upgrade",
            RELEASE,
            str(CHART),
            "--namespace",
            release_ns,
            "-f",
            values_file(tmp_path, values2),
            "--wait",
            "--timeout",
            "2m",
        )
        live = kget(cluster, "crd", "finetunejobs.kubetune.io")
        assert len(live["spec"]["versions"][0]["additionalPrinterColumns"]) == 1, (
            "helm upgrade changed the CRD"
        )
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
        live = kget(cluster, "crd", "finetunejobs.kubetune.io")
        want = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        assert len(live["spec"]["versions"][0]["additionalPrinterColumns"]) == len(want)
        assert job_status(cluster, ns, "helm-job")["phase"] == "Running"  # jobs survive
        cluster.kubectl("label", "crd", "finetunejobs.kubetune.io", "kubetune.io/crd-test-")
    finally:
        cluster.kubectl("delete", "namespace", ns2, "--wait=false", check=False)

    # -- uninstall: nothing of the release is left; the CRD (and so the jobs) is kept
    assert release_objects(cluster)
    cluster.helm("uninstall", RELEASE, "--namespace", release_ns, "--wait", "--timeout", "2m")
    assert release_objects(cluster) == []
    assert cluster.kubectl("get", "crd", "finetunejobs.kubetune.io", check=False).returncode == 0
    leftover = kget(
        cluster, "serviceaccounts,roles,rolebindings,configmaps,services", namespace=release_ns
    )
    names = {i["metadata"]["name"] for i in leftover["items"]}
    assert not {n for n in names if n.startswith(RELEASE)}, names
