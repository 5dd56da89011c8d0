"""The node agent's volumes: what each pod volume becomes on the host, and the mounts."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from kubetune.devcluster.nodeagent.env import ConfigError
from kubetune.devcluster.nodeagent.volumes import Mount, materialize, plan_mounts, plan_volumes

#: the volumes of an operator worker pod (kubetune_operator.render.pods), plus the rest
VOLUMES = [
    {
        "name": "config",
        "configMap": {"name": "job-config", "items": [{"key": "job.json", "path": "job.json"}]},
    },
    {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
    {"name": "tmp", "emptyDir": {}},
    {"name": "pvc-0", "persistentVolumeClaim": {"claimName": "ckpt", "readOnly": False}},
    {"name": "pvc-1", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
    {"name": "creds", "secret": {"secretName": "s3", "defaultMode": 0o440}},
    {"name": "opt", "secret": {"secretName": "absent", "optional": True}},
    {
        "name": "info",
        "downwardAPI": {
            "items": [{"path": "labels/rank", "fieldRef": {"fieldPath": "metadata.labels['rank']"}}]
        },
    },
]
MOUNTS = [
    {"name": "config", "mountPath": "/etc/kubetune", "readOnly": True},
    {"name": "dshm", "mountPath": "/dev/shm"},
    {"name": "tmp", "mountPath": "/tmp"},
    {"name": "pvc-0", "mountPath": "/mnt/pvc/ckpt"},
    {"name": "pvc-1", "mountPath": "/mnt/pvc/models", "readOnly": True},
    {"name": "creds", "mountPath": "/var/run/creds"},
    {"name": "pvc-0", "mountPath": "/mnt/pvc/ckpt/job/sub", "subPath": "job"},
]


def worker(volumes: list[dict] = VOLUMES) -> dict:
    return {
        "metadata": {"name": "job-a1-0", "namespace": "team", "labels": {"rank": "0"}},
        "spec": {"containers": [{"name": "trainer", "volumeMounts": MOUNTS}], "volumes": volumes},
    }


def test_plan_and_mounts(tmp_path: Path) -> None:
    box, pvc = tmp_path / "pod", tmp_path / "pvc"
    vols = plan_volumes(
        worker(),
        {"job-config": {"job.json": b"{}", "other": b"x"}},
        {"s3": {"id": b"AKIA", "key": b"secret"}},
        box,
        pvc,
    )
    assert vols["config"].files == {"job.json": (b"{}", 0o644)}  # only the listed item
    assert vols["creds"].files == {"id": (b"AKIA", 0o440), "key": (b"secret", 0o440)}
    assert vols["opt"].files == {} and vols["opt"].kind == "files"
    assert vols["info"].files == {"labels/rank": (b"0", 0o644)}
    assert vols["dshm"].kind == "tmpfs" and vols["dshm"].size_bytes == 2**30
    assert vols["tmp"].kind == "dir" and vols["tmp"].path == box / "volumes" / "tmp"
    # every pod's claim "ckpt" is the same host directory: the shared checkpoint volume
    assert vols["pvc-0"].path == pvc / "ckpt" and not vols["pvc-0"].read_only
    assert vols["pvc-1"].read_only

    mounts = plan_mounts(worker()["spec"]["containers"][0], vols)
    assert Mount("/dev/shm", None, False, 2**30) in mounts
    assert Mount("/etc/kubetune", box / "volumes" / "config", True) in mounts
    assert Mount("/mnt/pvc/models", pvc / "models", True) in mounts
    assert Mount("/var/run/creds", box / "volumes" / "creds", True) in mounts  # secrets: ro
    assert Mount("/mnt/pvc/ckpt/job/sub", pvc / "ckpt" / "job", False) in mounts
    depths = [m.target.count("/") for m in mounts]
    assert depths == sorted(depths)  # parents before what is mounted inside them


def test_materialize_writes_files_dirs_and_claims(tmp_path: Path) -> None:
    box, pvc = tmp_path / "pod", tmp_path / "pvc"
    vols = plan_volumes(
        worker(), {"job-config": {"job.json": b'{"a": 1}'}}, {"s3": {"id": b"AKIA"}}, box, pvc
    )
    materialize(vols, fs_group=None)
    assert (box / "volumes" / "config" / "job.json").read_bytes() == b'{"a": 1}'
    assert stat.S_IMODE((box / "volumes" / "creds" / "id").stat().st_mode) == 0o440
    assert (box / "volumes" / "info" / "labels" / "rank").read_text() == "0"
    assert stat.S_IMODE((box / "volumes" / "tmp").stat().st_mode) == 0o777
    assert (pvc / "ckpt").is_dir() and (pvc / "models").is_dir()


@pytest.mark.parametrize(
    ("volume", "message"),
    [
        ({"name": "c", "configMap": {"name": "nope"}}, "ConfigMap 'nope' not found"),
        (
            {"name": "c", "configMap": {"name": "cm", "items": [{"key": "k", "path": "../x"}]}},
            "invalid volume item path",
        ),
        (
            {"name": "c", "configMap": {"name": "cm", "items": [{"key": "zz", "path": "z"}]}},
            "key 'zz' not found",
        ),
        ({"name": "c", "iscsi": {}}, "unsupported source"),
    ],
)
def test_refusals(tmp_path: Path, volume: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_volumes(worker([volume]), {"cm": {"k": b"v"}}, {}, tmp_path, tmp_path)


def test_projected_token_and_mount_of_unknown_volume(tmp_path: Path) -> None:
    projected = {
        "name": "api",
        "projected": {
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {
                    "configMap": {
                        "name": "kube-root-ca.crt",
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    }
                },
            ]
        },
    }
    vols = plan_volumes(
        worker([projected]),
        {"kube-root-ca.crt": {"ca.crt": b"PEM"}},
        {},
        tmp_path,
        tmp_path,
        token=lambda aud, secs: f"tok-{aud}-{secs}",
    )
    assert vols["api"].files == {"token": (b"tok-None-3607", 0o644), "ca.crt": (b"PEM", 0o644)}
    with pytest.raises(ConfigError, match="names no volume"):
        plan_mounts({"volumeMounts": [{"name": "x", "mountPath": "/x"}]}, vols)
