"""The Gateway API CRDs the router's routes need: which files of the module's channel are taken
and how the per-version cache is filled (kubetune/devcluster/gateway.py); no Go, no cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kubetune.devcluster.gateway import channel_files, crd_cache_dir, fetch_crds, load_index
from kubetune.devcluster.versions import DevClusterError, Versions


def crd(kind: str, plural: str) -> dict[str, object]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.gateway.networking.k8s.io"},
        "spec": {"group": "gateway.networking.k8s.io", "names": {"kind": kind, "plural": plural}},
    }


@pytest.fixture
def module(tmp_path: Path) -> Path:
    """A Gateway API module laid out like v1.6.3's config/crd."""
    root = tmp_path / "gateway-api@v9.9.9"
    standard = root / "config" / "crd" / "standard"
    standard.mkdir(parents=True)
    kinds = {
        "gatewayclasses": "GatewayClass",
        "gateways": "Gateway",
        "httproutes": "HTTPRoute",
        "referencegrants": "ReferenceGrant",
        "grpcroutes": "GRPCRoute",
    }
    for plural, kind in kinds.items():
        path = standard / f"gateway.networking.k8s.io_{plural}.yaml"
        path.write_text(yaml.safe_dump(crd(kind, plural)))
    vap = standard / "gateway.networking.k8s.io_vap_safeupgrades.yaml"
    vap.write_text("kind: ValidatingAdmissionPolicy\n---\nkind: ValidatingAdmissionPolicyBinding\n")
    listed = [f"standard/{p.name}" for p in sorted(standard.iterdir()) if "grpc" not in p.name]
    (root / "config" / "crd" / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": listed})
    )
    return root


def test_the_channel_is_what_its_kustomization_lists_crds_only(module: Path) -> None:
    names = [p.name for p in channel_files(module)]
    assert "gateway.networking.k8s.io_httproutes.yaml" in names
    assert not any("grpcroutes" in n for n in names)  # not listed
    assert not any("vap_" in n for n in names)  # listed, but no CRD in it
    assert len(names) == 4


def test_cache_is_keyed_by_version_and_reused(
    module: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBETUNE_CACHE_DIR", str(tmp_path / "cache"))
    target = fetch_crds("v9.9.9", module=module)
    assert target == crd_cache_dir("v9.9.9") == tmp_path / "cache/gateway-api/v9.9.9/standard"
    kinds = sorted(e["kind"] for e in load_index(target))
    assert kinds == ["Gateway", "GatewayClass", "HTTPRoute", "ReferenceGrant"]
    # complete: a second fetch neither needs the module nor rewrites the files
    assert fetch_crds("v9.9.9", module=tmp_path / "gone") == target
    assert [p.name for p in target.parent.iterdir()] == ["standard"]
    assert (target / "gateway.networking.k8s.io_httproutes.yaml").is_file()


def test_a_channel_without_the_core_kinds_is_refused(tmp_path: Path) -> None:
    index = [
        {"file": "x.yaml", "name": "httproutes.gateway.networking.k8s.io", "kind": "HTTPRoute"}
    ]
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(DevClusterError, match="GatewayClass, Gateway, ReferenceGrant"):
        load_index(tmp_path)


def test_the_pinned_version() -> None:
    assert Versions.load().gateway_api == "v1.6.3"
