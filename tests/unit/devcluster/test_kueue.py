"""Kueue on the dev cluster: version keying of the shared build, and the manifests and
configuration ``kubetune dev kueue up`` renders (no binary or cluster needed; tests/e2e/kueue
runs the real one)."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from kubetune.devcluster import kueue
from kubetune.devcluster.versions import (
    COMPONENT_BINARIES,
    DATA_DIR,
    Binaries,
    DevClusterError,
    Versions,
)

# -- version keying -----------------------------------------------------------------------------


def test_kueue_is_built_with_kubernetes_and_keys_its_cache(tmp_path: Path) -> None:
    versions = Versions.load()
    assert versions.kueue == "v0.19.2"
    assert "kueue" in COMPONENT_BINARIES["kubernetes"]
    binaries = Binaries(versions, tmp_path)
    key = f"kubernetes-{versions.kubernetes}+kueue-v0.19.2+kwok-{versions.kwok}"
    assert binaries.component_dir("kubernetes") == tmp_path / key
    assert binaries.path("kueue") == tmp_path / key / "kueue"
    assert binaries.path("kubectl") == tmp_path / key / "kubectl"
    # other components keep their plain version
    assert binaries.component_dir("etcd") == tmp_path / f"etcd-{versions.etcd}"


def _complete(directory: Path, names: tuple[str, ...]) -> None:
    directory.mkdir(parents=True)
    for name in names:
        (directory / name).write_text("#!/bin/sh\n")
        (directory / name).chmod(0o755)
    (directory / ".complete").write_text("done\n")


def test_an_old_kubernetes_cache_without_kueue_is_rebuilt(tmp_path: Path) -> None:
    versions = Versions.load()
    old = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
    _complete(tmp_path / f"kubernetes-{versions.kubernetes}", old)  # the pre-Kueue layout
    binaries = Binaries(versions, tmp_path)
    assert "kubernetes" in binaries.missing(("kubernetes",))
    _complete(binaries.component_dir("kubernetes"), COMPONENT_BINARIES["kubernetes"])
    assert binaries.missing(("kubernetes",)) == []


def test_build_sh_uses_the_same_cache_key(tmp_path: Path) -> None:
    """build.sh finds the directory versions.py names complete and skips the build (a fake
    `go` answers the version checks; nothing is compiled)."""
    fake_go = tmp_path / "go"
    fake_go.write_text("#!/bin/sh\necho go1.26.8\n")
    fake_go.chmod(0o755)
    cache = tmp_path / "cache"
    binaries = Binaries(Versions.load(), cache / "bin")
    _complete(binaries.component_dir("kubernetes"), COMPONENT_BINARIES["kubernetes"])
    env = dict(os.environ, GO=str(fake_go), KUBETUNE_CACHE_DIR=str(cache))
    out = subprocess.run(
        ["bash", str(DATA_DIR / "build.sh"), "kubernetes"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert f"cached in {binaries.component_dir('kubernetes')}" in out.stderr


def test_the_wrapper_gomod_requires_kueue_and_kwok_in_the_kubernetes_build() -> None:
    script = (DATA_DIR / "build.sh").read_text()
    assert '"sigs.k8s.io/kueue@${KUEUE_VERSION}" "sigs.k8s.io/kwok@${KWOK_VERSION}"' in script
    assert "targets+=(sigs.k8s.io/kueue/cmd/kueue sigs.k8s.io/kwok/cmd/kwok)" in script
    assert "sigs.k8s.io/kueue/pkg/version" in script
    assert "sigs.k8s.io/kwok/pkg/consts.Version" in script
    assert "build_kwok" not in script  # no second module graph for it


def test_kwok_lives_in_the_kubernetes_cache_directory(tmp_path: Path) -> None:
    versions = Versions.load()
    binaries = Binaries(versions, tmp_path)
    assert binaries.path("kwok") == binaries.component_dir("kubernetes") / "kwok"
    assert f"+kwok-{versions.kwok}" in versions.cache_key("kubernetes")


# -- manifests ------------------------------------------------------------------------------------


def _crd(plural: str) -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.kueue.x-k8s.io", "creationTimestamp": None},
        "spec": {"group": "kueue.x-k8s.io", "names": {"plural": plural}, "versions": []},
    }


def test_crds_get_conversion_webhooks_on_the_service() -> None:
    plurals = ["workloads", "resourceflavors", "clusterqueues", "topologies", "cohorts"]
    rendered = {c["spec"]["names"]["plural"]: c for c in kueue.render_crds(map(_crd, plurals))}
    for plural in ("workloads", "clusterqueues", "cohorts"):
        conv = rendered[plural]["spec"]["conversion"]
        assert conv["strategy"] == "Webhook"
        assert conv["webhook"]["conversionReviewVersions"] == ["v1"]
        assert conv["webhook"]["clientConfig"] == {
            "service": {
                "namespace": "kueue-system",
                "name": "kueue-webhook-service",
                "path": "/convert",
                "port": 443,
            }
        }
        assert "creationTimestamp" not in rendered[plural]["metadata"]
    assert "conversion" not in rendered["resourceflavors"]["spec"]
    assert "conversion" not in rendered["topologies"]["spec"]


def _hook(name: str, group: str, resource: str) -> dict:
    return {
        "name": name,
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Fail",
        "clientConfig": {
            "service": {"name": "webhook-service", "namespace": "system", "path": f"/{name}"}
        },
        "rules": [
            {
                "apiGroups": [group],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": [resource],
            }
        ],
    }


UPSTREAM_WEBHOOKS = [
    {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "mutating-webhook-configuration"},
        "webhooks": [
            _hook("mjob.kb.io", "batch", "jobs"),
            _hook("mpod.kb.io", "", "pods"),
            _hook("mworkload.kb.io", "kueue.x-k8s.io", "workloads"),
        ],
    },
    {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "validating-webhook-configuration"},
        "webhooks": [
            _hook("vpod.kb.io", "", "pods"),
            _hook("vclusterqueue.kb.io", "kueue.x-k8s.io", "clusterqueues"),
            _hook("vjobset.kb.io", "jobset.x-k8s.io", "jobsets"),
        ],
    },
]


def test_only_the_kueue_object_webhooks_are_installed() -> None:
    mutating, validating = kueue.render_webhook_configurations(UPSTREAM_WEBHOOKS)
    assert mutating["metadata"] == {"name": "kueue-mutating-webhook-configuration"}
    assert validating["metadata"] == {"name": "kueue-validating-webhook-configuration"}
    assert [w["name"] for w in mutating["webhooks"]] == ["mworkload.kb.io"]
    assert [w["name"] for w in validating["webhooks"]] == ["vclusterqueue.kb.io"]
    assert validating["webhooks"][0]["clientConfig"]["service"] == {
        "namespace": "kueue-system",
        "name": "kueue-webhook-service",
        "path": "/vclusterqueue.kb.io",
        "port": 443,
    }
    assert validating["webhooks"][0]["failurePolicy"] == "Fail"  # upstream's, kept
    # the upstream documents are not modified
    assert UPSTREAM_WEBHOOKS[1]["webhooks"][1]["clientConfig"]["service"]["name"] == (
        "webhook-service"
    )


def test_webhooks_without_kueue_ones_are_refused() -> None:
    only_pods = [
        {**doc, "webhooks": [_hook("vpod.kb.io", "", "pods")]} for doc in UPSTREAM_WEBHOOKS
    ]
    with pytest.raises(DevClusterError, match=r"kueue\.x-k8s\.io webhooks"):
        kueue.render_webhook_configurations(only_pods)


def _gomodcache() -> Path:
    env = os.environ.get("GOMODCACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("GOPATH", str(Path.home() / "go"))) / "pkg" / "mod"


def test_the_real_upstream_manifests_render() -> None:
    """With Kueue's module in the module cache (the build downloads it): every webhook kept is
    for a Kueue object, none for pods or jobs, and the workload webhooks are among them."""
    module = _gomodcache() / f"sigs.k8s.io/kueue@{Versions.load().kueue}"
    if not module.is_dir():
        pytest.skip(f"{module} not downloaded (the kubernetes+kueue build downloads it)")
    upstream = kueue.UpstreamManifests.load(module)
    names = {
        w["name"]
        for c in kueue.render_webhook_configurations(upstream.webhook_configurations)
        for w in c["webhooks"]
    }
    assert {"mworkload.kb.io", "vworkload.kb.io", "vclusterqueue.kb.io"} <= names
    assert not names & {"vpod.kb.io", "mpod.kb.io", "vjob.kb.io", "mjob.kb.io"}
    crds = kueue.render_crds(upstream.crds)
    with_webhook = {c["spec"]["names"]["plural"] for c in crds if "conversion" in c["spec"]}
    assert with_webhook == set(kueue.CONVERSION_WEBHOOK_CRDS)
    workloads = next(c for c in crds if c["spec"]["names"]["plural"] == "workloads")
    served = {v["name"] for v in workloads["spec"]["versions"] if v["served"]}
    assert kueue.API_VERSION.split("/")[1] in served


def test_service_and_endpointslice_point_at_the_host_address() -> None:
    ns, secret, svc, eps = kueue.render_service("192.0.2.7", 40123)
    assert ns == {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kueue-system"}}
    # Kueue's cert rotator fills this Secret but never creates it
    assert secret["kind"] == "Secret" and "data" not in secret
    assert secret["metadata"] == {"name": "kueue-webhook-server-cert", "namespace": "kueue-system"}
    assert "selector" not in svc["spec"]
    (port,) = svc["spec"]["ports"]
    assert port["port"] == 443 and port["targetPort"] == 40123
    assert eps["kind"] == "EndpointSlice" and eps["addressType"] == "IPv4"
    assert eps["metadata"]["labels"]["kubernetes.io/service-name"] == "kueue-webhook-service"
    # the API server pairs slice and Service ports by name
    assert eps["ports"] == [{"name": port["name"], "port": 40123, "protocol": "TCP"}]
    assert eps["endpoints"] == [{"addresses": ["192.0.2.7"], "conditions": {"ready": True}}]


def test_the_serving_certificate_is_written_like_a_secret_volume(tmp_path: Path) -> None:
    data = {
        "tls.crt": base64.b64encode(b"CERT").decode(),
        "tls.key": base64.b64encode(b"KEY").decode(),
    }
    kueue.write_secret_files(tmp_path / "certs", data, ("tls.crt", "tls.key", "ca.crt"))
    assert (tmp_path / "certs" / "tls.crt").read_bytes() == b"CERT"
    assert (tmp_path / "certs" / "tls.key").read_bytes() == b"KEY"
    assert (tmp_path / "certs" / "tls.key").stat().st_mode & 0o077 == 0
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == ["tls.crt", "tls.key"]


def test_configuration(tmp_path: Path) -> None:
    settings = kueue.KueueSettings("192.0.2.7", 40123, 40124, 40125, tmp_path / "certs")
    cfg = kueue.render_config(settings)
    assert cfg["apiVersion"] == "config.kueue.x-k8s.io/v1beta2"
    assert cfg["kind"] == "Configuration" and cfg["namespace"] == "kueue-system"
    assert cfg["webhook"] == {
        "host": "192.0.2.7",
        "port": 40123,
        "certDir": str(tmp_path / "certs"),
    }
    assert cfg["metrics"] == {"bindAddress": "127.0.0.1:40124"}
    assert cfg["health"] == {"healthProbeBindAddress": "127.0.0.1:40125"}
    assert cfg["leaderElection"] == {"leaderElect": False}
    assert cfg["internalCertManagement"] == {
        "enable": True,
        "webhookServiceName": "kueue-webhook-service",
        "webhookSecretName": "kueue-webhook-server-cert",
    }
    assert cfg["integrations"] == {"frameworks": ["batch/job"]}
    assert "waitForPodsReady" not in cfg
    assert cfg["featureGates"] == {"VisibilityOnDemand": False}
    yaml.safe_dump(cfg)  # serialisable


def test_host_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kueue.HOST_IP_ENV, "192.0.2.9")
    assert kueue.host_ipv4() == "192.0.2.9"
    monkeypatch.setenv(kueue.HOST_IP_ENV, "127.0.0.1")
    with pytest.raises(DevClusterError, match="non-loopback"):
        kueue.host_ipv4()
    monkeypatch.delenv(kueue.HOST_IP_ENV)
    try:
        address = kueue.host_ipv4()
    except DevClusterError:
        pytest.skip("this machine has no non-loopback IPv4 address")
    assert not address.startswith("127.")


def test_default_dir_is_beside_the_cluster_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(kueue.DIR_ENV, raising=False)
    assert kueue.default_dir(tmp_path / "cluster") == tmp_path / "cluster-kueue"
    monkeypatch.setenv(kueue.DIR_ENV, str(tmp_path / "k"))
    assert kueue.default_dir(tmp_path / "cluster") == tmp_path / "k"


def test_cli_has_the_kueue_commands(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kubetune.cli.main import app

    runner = CliRunner()
    args = ["--state-dir", str(tmp_path / "cluster"), "--dir", str(tmp_path / "kueue")]
    result = runner.invoke(app, ["dev", "kueue", "status", *args])
    assert result.exit_code == 1  # nothing running there
    result = runner.invoke(app, ["dev", "kueue", "down", *args])
    assert result.exit_code == 0
    result = runner.invoke(app, ["dev", "kueue", "up", *args])
    assert result.exit_code == 1  # no cluster (or no binary): a clear error, not a traceback
    assert result.exception is None or isinstance(result.exception, SystemExit)
