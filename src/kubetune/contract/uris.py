"""API locations (``pvc://``, ``s3://``, ``hf://``, ``file://``, absolute paths) split
into parts, and where a claim is mounted: the operator mounts what the trainer opens.

The API's ``LOCATION_PATTERN`` validates the strings (it is the CRD's schema); this is
the one place that takes them apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePath, PurePosixPath

from kubetune.contract.paths import DEFAULT_PVC_ROOT


class Scheme(StrEnum):
    """Where a location's content lives."""

    PVC = "pvc"  # a PersistentVolumeClaim in the job's namespace
    S3 = "s3"  # an S3-compatible object store
    HF = "hf"  # a hub id, resolved only from the local cache or mirror
    FILE = "file"  # a path inside the trainer image (file:///x or /x)


@dataclass(frozen=True)
class StorageUri:
    """A parsed location.

    ``name`` is the claim, the bucket or the hub repository id (empty for files);
    ``path`` is the path inside the claim, the object key prefix, or the absolute path
    of a file (empty for hub ids).
    """

    scheme: Scheme
    name: str
    path: str

    def local_path(self, pvc_root: str | PurePath = DEFAULT_PVC_ROOT) -> PurePosixPath | None:
        """Where a trainer container sees the content: PVCs mounted under ``pvc_root``,
        files as they are; None for remote locations (s3, hf)."""
        if self.scheme is Scheme.PVC:
            mount = pvc_mount_path(self.name, pvc_root)
            # Leading slashes stripped: ``pvc://ckpt//etc`` stays inside the mount.
            sub = self.path.strip("/")
            if PARENT_SEGMENT in sub.split("/"):
                raise ValueError(f"path {self.path!r} climbs out of claim {self.name!r}")
            return mount / sub if sub else mount
        if self.scheme is Scheme.FILE:
            return PurePosixPath(self.path)
        return None


def pvc_mount_path(claim: str, pvc_root: str | PurePath = DEFAULT_PVC_ROOT) -> PurePosixPath:
    """The operator mounts claim ``claim`` here; the trainer looks for it here."""
    return PurePosixPath(pvc_root) / claim


PARENT_SEGMENT = ".."


def _refuse_escapes(uri: str, path: str) -> None:
    """A ``..`` segment would leave the claim, bucket prefix or directory named."""
    if PARENT_SEGMENT in path.split("/"):
        raise ValueError(
            f"{uri!r} has a '..' path segment: a location may not climb out of its "
            "claim, bucket or directory (name the path from its root instead)"
        )


def parse_uri(uri: str) -> StorageUri:
    """Split ``uri`` into scheme, name and path; ValueError for anything else.

    ``..`` segments are refused in every scheme: ``pvc://ckpt/../../etc/x`` would
    otherwise land outside the claim's mount.
    """
    if uri.startswith("/"):
        _refuse_escapes(uri, uri)
        return StorageUri(Scheme.FILE, "", uri)
    prefix, sep, rest = uri.partition("://")
    try:
        scheme = Scheme(prefix) if sep else None
    except ValueError:
        scheme = None
    if scheme is None:
        raise ValueError("unsupported location scheme")
    if scheme is Scheme.FILE:
        if not rest.startswith("/"):
            raise ValueError("file:// locations need an absolute path (file:///...)")
        _refuse_escapes(uri, rest)
        return StorageUri(scheme, "", rest)
    name, _, path = (rest, "", "") if scheme is Scheme.HF else rest.partition("/")
    if not name:
        raise ValueError(f"{scheme}:// location without a {_NAME_OF[scheme]}")
    _refuse_escapes(uri, rest)
    return StorageUri(scheme, name, path)


_NAME_OF = {Scheme.PVC: "claim", Scheme.S3: "bucket", Scheme.HF: "repository id"}
