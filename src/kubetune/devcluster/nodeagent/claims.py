"""PersistentVolumeClaims for real-pod jobs: the agent mounts ``<state>/pvc/<claimName>``
for any claim, but the scheduler places a pod only once its claims are Bound, so each claim
gets a pre-bound hostPath PersistentVolume on that directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

STORAGE_CLASS = "kubetune-real"


def claim_manifests(
    claim: str, namespace: str, host_dir: Path, size: str = "10Gi"
) -> list[dict[str, Any]]:
    """A PersistentVolume (hostPath ``host_dir``) bound in advance to claim
    ``namespace/claim``, and that claim."""
    pv_name = f"{namespace}-{claim}"[:253]
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv_name, "labels": {"kubetune.io/node-pool": "real"}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": STORAGE_CLASS,
            "hostPath": {"path": str(host_dir), "type": "DirectoryOrCreate"},
            "claimRef": {"namespace": namespace, "name": claim},
        },
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim, "namespace": namespace},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": STORAGE_CLASS,
            "volumeName": pv_name,
            "resources": {"requests": {"storage": size}},
        },
    }
    return [pv, pvc]
